"""Peak host memory of a whole run on MOSEI-shaped data read from an MMSA pickle, as a multiple of the
feature bytes: ``python -m bench memory --scale 0.25``.

MOSEI shape (``bench/shapes.py``): train/valid/test 16,326 / 1,871 / 4,659 samples (times
``--scale``), text (N, 50, 768), audio (N, 500, 74), vision (N, 500, 35) float32 in the unaligned
MMSA pickle layout: 8.49 GB of features at scale 1. The pickle is generated in chunks (memmaps
streamed with pickle protocol 5; the time is printed). Each variant then runs in a fresh process
(peaks are per process) through the CLI's own path: ``load_and_standardize`` (restricted unpickler,
reader, cleaning, checks, standardization), one training epoch (its first ``TRAIN_STEPS`` steps:
memory does not grow with steps), validation, calibration and the full test and valid sweeps
(``Trainer.finish``). A thread samples ``/proc/self/status`` every 10 ms: peak RSS, and its
private part (RssAnon: what the process itself holds; the rest is file pages the kernel can drop).

Variants: ``float32`` (the default), ``float16`` (``--feature_dtype float16``), ``cache`` (a second
run on a ``--feature_cache`` that a first run wrote: features memory-mapped from .npy files).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.shapes import feature_bytes, scaled, write_mmsa_pickle

TRAIN_STEPS = 20
VARIANTS = {"float32": {}, "float16": {"feature_dtype": "float16"}, "cache": {"feature_cache": "CACHE"}}


def _status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile of this process in MB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1e3
    return out


class PeakSampler:
    """Peak VmRSS and RssAnon, sampled in a thread; ``mark(name)`` records the current values."""

    def __init__(self, every_s: float = 0.01):
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0}
        self.marks: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(every_s)

    def sample(self) -> dict:
        now = _status()
        for k in self.peak:
            self.peak[k] = max(self.peak[k], now.get(k, 0.0))
        return now

    def mark(self, name: str) -> None:
        self.marks[name] = {**self.sample(), "peak_rss": self.peak["VmRSS"], "peak_anon": self.peak["RssAnon"]}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def child(args: dict) -> dict:
    """One run of the CLI path on ``args["pickle"]`` with the ``args["config"]`` overrides."""
    import torch

    import training.trainer as trainer_mod
    from training.config import Config
    from training.run import load_and_standardize

    torch.set_num_threads(1)
    sampler = PeakSampler()
    sampler.mark("start")
    cfg = Config(dataset="mosei", data_path=args["pickle"], epochs=1, device=args["device"], quiet=True,
                 tensorboard=False, **args["config"])
    t = time.perf_counter()
    data, stats = load_and_standardize(cfg)
    load_s = time.perf_counter() - t
    sampler.mark("loaded")
    if hasattr(trainer_mod, "batch_slices"):  # only the first TRAIN_STEPS steps
        cut = trainer_mod.batch_slices
        trainer_mod.batch_slices = lambda *a, **k: cut(*a, **k)[:TRAIN_STEPS]
    else:  # the trainer before SplitTensors: its DataLoader
        import itertools
        loader = trainer_mod.make_loader
        trainer_mod.make_loader = lambda *a, **k: list(itertools.islice(loader(*a, **k), TRAIN_STEPS))
    with tempfile.TemporaryDirectory() as tmp:
        tr = trainer_mod.Trainer(cfg, data, 1111, Path(tmp), standardizer=stats, progress=False)
        tr.fit()
        sampler.mark("trained")
        tr.finish(("valid", "test"))
    sampler.mark("evaluated")
    sampler.stop()
    return {"load_s": load_s, "marks": sampler.marks, "peak_rss": sampler.peak["VmRSS"],
            "peak_anon": sampler.peak["RssAnon"],
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def _spawn(args: dict, tmp: Path, name: str) -> dict:
    out = tmp / f"{name}.json"
    (tmp / f"{name}.args.json").write_text(json.dumps(args))
    subprocess.run([sys.executable, "-m", "bench.memory", str(tmp / f"{name}.args.json"), str(out)], check=True)
    return json.loads(out.read_text())


def run(quick: bool = False, device: str = "cpu", scale: float | None = None,
        variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    scale = scale if scale is not None else (0.01 if quick else 0.05)
    sizes = scaled("mosei", scale)
    raw = feature_bytes("mosei", sizes) / 1e6
    frames = {"eval_frame_missing_rates": [0.0, 0.5]} if quick else {}
    results: dict = {"scale": scale, "sizes": list(sizes), "feature_mb": raw}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp_name:  # TMPDIR picks the disk
        tmp = Path(tmp_name)
        t = time.perf_counter()
        write_mmsa_pickle(str(tmp / "mosei.pkl"), "mosei", sizes)
        results["generate_s"] = time.perf_counter() - t
        print(f"MOSEI shape x {scale:g}: train/valid/test {'/'.join(map(str, sizes))}, {raw:.0f} MB of float32 "
              f"features; pickle generated in {results['generate_s']:.1f} s "
              f"({(tmp / 'mosei.pkl').stat().st_size / 1e6:.0f} MB)", flush=True)
        for name in variants:
            config = {k: (str(tmp / "cache") if v == "CACHE" else v) for k, v in {**VARIANTS[name], **frames}.items()}
            args = {"pickle": str(tmp / "mosei.pkl"), "device": device, "config": config}
            if name == "cache":
                results["cache_build"] = _spawn(args, tmp, "cache_build")
            f = results[name] = _spawn(args, tmp, name)
            m = f["marks"]
            f["multiplier"], f["private_multiplier"] = f["peak_rss"] / raw, f["peak_anon"] / raw
            f["above_start_multiplier"] = (f["peak_rss"] - m["start"]["VmRSS"]) / raw
            print(f"  {name:>8}: peak RSS {f['peak_rss']:.0f} MB = {f['multiplier']:.2f}x the features "
                  f"({f['above_start_multiplier']:.2f}x above the {m['start']['VmRSS']:.0f} MB of imports) "
                  f"(private {f['peak_anon']:.0f} MB = {f['peak_anon'] / raw:.2f}x); after load "
                  f"{m['loaded']['VmRSS']:.0f} MB ({f['load_s']:.1f} s), peak to the end of training "
                  f"{m['trained']['peak_rss']:.0f} MB (private {m['trained']['peak_anon']:.0f} MB)", flush=True)
    return results


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(child(json.loads(Path(sys.argv[1]).read_text()))))
