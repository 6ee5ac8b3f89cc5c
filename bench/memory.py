"""Peak resident memory and throughput of a training run on MOSEI-sized generated data.

Full MOSEI shapes (``make_synthetic(n_train=16326, n_valid=1871, n_test=4659, seq_len=500,
dims=(768, 74, 35))``) need 22856 * 500 * 877 * 4 B = 40.1 GB of float32 features (28.6 GB for
train alone), more than this machine's memory, so the run is measured at two reduced sizes with
MOSEI's split proportions and every other shape unchanged; the peak RSS is fitted as
``a + b * N`` and ``b`` is compared with the raw feature bytes per sample (1.754 MB): a data
layer that held extra copies of the arrays would show ``b`` well above 1.754 MB.

Each size runs in a fresh child process (``ru_maxrss`` is a process-lifetime peak): generate,
standardize, one training epoch with the default config and batch size (throughput in
samples/s), validation, then the test sweep (the default 8 rates, 7 subsets and frame-level
rates), as ``Trainer.fit`` + ``Trainer.finish`` do.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSEI = (16326, 1871, 4659)
SEQ_LEN = 500
DIMS = (768, 74, 35)
BYTES_PER_SAMPLE = SEQ_LEN * sum(DIMS) * 4


def rss_mb() -> float:
    """Current resident set size in MB (from /proc/self/statm)."""
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def child(n_train: int, out: str) -> None:
    import torch

    from datasets import Standardizer, make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    scale = n_train / MOSEI[0]
    sizes = (n_train, max(32, round(MOSEI[1] * scale)), max(32, round(MOSEI[2] * scale)))
    fig = {"n": list(sizes), "start_mb": rss_mb()}
    data = make_synthetic(n_train=sizes[0], n_valid=sizes[1], n_test=sizes[2], seq_len=SEQ_LEN, dims=DIMS)
    fig["raw_mb"] = sum(s.features(m).nbytes for s in data.splits.values() for m in ("text", "audio", "vision")) / 1e6
    fig["after_data_mb"] = rss_mb()
    Standardizer.fit(data.splits["train"]).apply(data)
    fig["after_standardize_mb"] = rss_mb()
    cfg = Config(epochs=1, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, data, 1111, Path(tmp), progress=False)
        t = time.perf_counter()
        tr.train_epoch()
        fig["train_epoch_s"] = time.perf_counter() - t
        fig["samples_per_s"] = sizes[0] / fig["train_epoch_s"]
        fig["after_train_peak_mb"] = peak_mb()
        tr.epoch = 1
        tr.save_best()
        tr.finish(("test",))
    fig["peak_mb"] = peak_mb()
    fig["torch_threads"] = torch.get_num_threads()
    Path(out).write_text(json.dumps(fig))


def run(quick: bool = False) -> dict:
    sizes = (128, 384) if quick else (256, 768)
    figs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            out = Path(tmp) / f"{n}.json"
            subprocess.run([sys.executable, "-m", "bench.memory", str(n), str(out)], check=True)
            figs.append(json.loads(out.read_text()))
    for f in figs:
        print(f"n = {f['n']} (train/valid/test): raw features {f['raw_mb']:.0f} MB; RSS at start "
              f"{f['start_mb']:.0f} MB, after generate "
              f"{f['after_data_mb']:.0f} MB, after standardize {f['after_standardize_mb']:.0f} MB, peak in "
              f"training {f['after_train_peak_mb']:.0f} MB, peak overall {f['peak_mb']:.0f} MB; "
              f"train throughput {f['samples_per_s']:.1f} samples/s ({f['train_epoch_s']:.1f} s/epoch)")
    (a, b) = figs
    n_a, n_b = sum(a["n"]), sum(b["n"])
    slope = (b["peak_mb"] - a["peak_mb"]) / (n_b - n_a)
    slope_train = (b["after_train_peak_mb"] - a["after_train_peak_mb"]) / (n_b - n_a)
    base = a["peak_mb"] - slope * n_a
    raw = BYTES_PER_SAMPLE / 1e6
    full = base + slope * sum(MOSEI)
    print(f"peak RSS per sample: {slope:.3f} MB overall, {slope_train:.3f} MB up to the end of training; raw "
          f"features {raw:.3f} MB/sample -> overall/raw = {slope / raw:.2f}x, training/raw = "
          f"{slope_train / raw:.2f}x; fixed part {base:.0f} MB")
    print(f"extrapolated peak for full MOSEI ({sum(MOSEI)} samples): {full / 1e3:.1f} GB "
          f"(raw features {sum(MOSEI) * raw / 1e3:.1f} GB)")
    return {"sizes": figs, "peak_mb_per_sample": slope, "train_peak_mb_per_sample": slope_train,
            "raw_mb_per_sample": raw, "fixed_mb": base, "full_mosei_peak_gb": full / 1e3}


if __name__ == "__main__":
    child(int(sys.argv[1]), sys.argv[2])
