"""A whole experiment: load and standardize the data, train one model per seed, sweep, report.

``run_experiment(cfg)`` is what the command line, ``train_v4.sh`` and ``tune.py`` all call.
Each seed lives in ``OUTPUT_DIR/seed_<seed>/`` (``last.pt``, ``best.pt``, ``result.json`` and
``result.npz`` once finished), so ``--resume`` skips finished seeds and continues the
interrupted one from its last epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from datasets import MultimodalData, Standardizer, load_data, rate_key
from training.config import RESUMABLE_CHANGES, Config, save_config
from training.evaluate import aggregate, evaluate_split
from training.report import write_json_atomic, write_report
from training.trainer import Trainer, load_for_eval, resolve_device

log = logging.getLogger(__name__)

# (seed index, epoch, validation value) after every epoch; may raise to stop (Optuna pruning).
SeedEpochCallback = Callable[[int, int, float], None]


class RunExistsError(RuntimeError):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


def load_and_standardize(cfg: Config, stats: dict | None = None) -> tuple[MultimodalData, dict]:
    """Load the configured data and standardize it: with train statistics, or with ``stats``
    (the statistics a checkpoint carries). Returns the data and the statistics as tensors."""
    data = load_data(cfg.dataset, cfg.data_path, cfg.data_format, cfg.synthetic_seed, cfg.nan_policy)
    if stats:
        Standardizer.from_state_dict({k: v.numpy() if torch.is_tensor(v) else v
                                      for k, v in stats.items()}).apply(data)
        return data, stats
    if not cfg.standardize:
        return data, {}
    std = Standardizer.fit(data.splits["train"])
    std.apply(data)
    return data, {k: torch.as_tensor(np.asarray(v)) for k, v in std.state_dict().items()}


def resume_conflicts(saved: dict, cfg: Config) -> list[str]:
    """``"name saved -> now"`` for every setting that differs from the run being resumed (a
    setting the saved config predates counts as its default)."""
    now, default = cfg.to_dict(), Config().to_dict()
    return [f"{k} {saved.get(k, default[k])!r} -> {now[k]!r}" for k in now
            if k not in RESUMABLE_CHANGES and saved.get(k, default[k]) != now[k]]


def check_output_dir(cfg: Config) -> None:
    out = Path(cfg.output_dir)
    previous = [p for p in ("metrics.json", "config.json") if (out / p).exists()] + \
        [str(p.relative_to(out)) for p in out.glob("seed_*/last.pt")]
    if previous and not (cfg.resume or cfg.overwrite):
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(previous[:3])}); pass --resume to continue it, "
            f"--overwrite to replace it, or another --output_dir")
    if cfg.resume and (out / "config.json").exists():
        try:
            saved = json.loads((out / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise RunExistsError(f"--resume: cannot read {out / 'config.json'}: {err}") from None
        changed = resume_conflicts(saved, cfg)
        if changed:
            raise RunExistsError(
                f"--resume: {out} was started with other settings ({'; '.join(changed[:5])}"
                f"{'; ...' if len(changed) > 5 else ''}); resume with the same flags, or pass --overwrite "
                f"or another --output_dir")
    if cfg.overwrite:
        for p in out.glob("seed_*/*"):
            if p.name in ("last.pt", "best.pt", "result.json", "result.npz"):
                p.unlink()


def _save_seed_result(run_dir: Path, result: dict) -> None:
    for name in ("valid", "test"):
        if name in result:
            arrays = result[name].pop("arrays")
            np.savez(run_dir / f"result_{name}.npz", **arrays)
    write_json_atomic(result, run_dir / "result.json")
    for name in ("valid", "test"):
        if name in result:
            with np.load(run_dir / f"result_{name}.npz") as z:
                result[name]["arrays"] = {k: z[k] for k in z.files}


def _load_seed_result(run_dir: Path, splits: tuple[str, ...]) -> dict | None:
    path = run_dir / "result.json"
    if not path.exists():
        return None
    with open(path) as fh:
        result = json.load(fh)
    if any(s not in result for s in splits):
        return None
    for name in splits:
        with np.load(run_dir / f"result_{name}.npz") as z:
            result[name]["arrays"] = {k: z[k] for k in z.files}
    return result


def _writer(cfg: Config, seed: int):
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(cfg.output_dir) / "tb" / f"seed_{seed}"))


def _metrics(cfg: Config, per_seed: list[dict], split: str, train_seconds: float) -> dict:
    results, std = aggregate([r[split] for r in per_seed])
    return {"config": cfg.to_dict(), "seeds": list(cfg.seeds), "split": split, "results": results,
            "std": std, "train_seconds": train_seconds,
            "best_epochs": [r.get("best_epoch") for r in per_seed],
            "calibration": [r.get("calibration") for r in per_seed]}


def run_experiment(cfg: Config, on_epoch: SeedEpochCallback | None = None,
                   splits: tuple[str, ...] = ("valid", "test"), data: MultimodalData | None = None,
                   stats: dict | None = None) -> dict:
    """Train every seed of ``cfg`` and sweep ``splits``; returns ``{split: metrics}``.

    With ``"test"`` in ``splits`` it writes the report into ``cfg.output_dir`` and adds the
    printed table under ``"table"``. ``data``/``stats`` let a caller reuse loaded data.
    """
    out = Path(cfg.output_dir)
    check_output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, str(out / "config.json"))
    if data is None:
        data, stats = load_and_standardize(cfg)
    per_seed = []
    t0 = time.perf_counter()
    for i, seed in enumerate(cfg.seeds):
        run_dir = out / f"seed_{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        result = _load_seed_result(run_dir, splits) if cfg.resume else None
        if result is None:
            writer = _writer(cfg, seed)
            try:
                trainer = Trainer(cfg, data, seed, run_dir, stats, writer, progress=not cfg.quiet)
                if cfg.resume:
                    trainer.resume()
                cb = None if on_epoch is None else (lambda e, v, i=i: on_epoch(i, e, v))
                trainer.fit(cb)
                result = trainer.finish(splits)
                if writer is not None and "test" in result:
                    _log_hparams(writer, cfg, result)
            finally:
                if writer is not None:
                    writer.close()
            _save_seed_result(run_dir, result)
        per_seed.append(result)
    train_seconds = time.perf_counter() - t0
    metrics = {s: _metrics(cfg, per_seed, s, train_seconds) for s in splits}
    if "test" in splits:
        test = metrics["test"]
        test["validation"] = metrics["valid"]["results"] if "valid" in metrics else {}
        test["table"] = write_report(out, test, [r["test"] for r in per_seed],
                                     data.splits["test"].labels, cfg.eval_missing_rates, data=data)
    return metrics


def _log_hparams(writer, cfg: Config, result: dict) -> None:
    hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}
    test = result["test"]
    final = {f"hparam/test_p{rate_key(p)}": v["acc2_non0"] for p in (0.0, 0.5)
             if (v := test["missing_rate"].get(rate_key(p)))}
    final["hparam/best_val"] = result["best_value"]
    writer.add_hparams(hp, final, run_name=".")


def evaluate_checkpoints(cfg: Config) -> dict:
    """``--eval_only``: evaluate ``cfg.checkpoint`` (a best.pt, or a run folder of seed_*/best.pt)
    on the test split of ``cfg``'s data, with the standardization statistics the model carries."""
    path = Path(cfg.checkpoint)
    files = sorted(path.glob("seed_*/best.pt")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path} holds no seed_*/best.pt checkpoint")
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, seeds, data = [], [], None
    for f in files:
        model, saved, stats, cal, dims = load_for_eval(f, device)
        if data is None:
            data, _ = load_and_standardize(cfg, stats)
        if dict(data.dims) != dims:
            raise ValueError(f"{cfg.data_path or cfg.dataset} has feature dims {dict(data.dims)} but "
                             f"the checkpoint {f} was trained on {dims}")
        res = evaluate_split(model, data.splits["test"], cfg.eval_missing_rates, cfg.eval_frame_missing_rates,
                             cfg.batch_size, device, saved.task, saved.num_classes, cal)
        per_seed.append({"test": res})
        seeds.append(int(f.parent.name.split("_")[-1]) if f.parent.name.startswith("seed_") else saved.seeds[0])
    metrics = _metrics(cfg, per_seed, "test", 0.0)
    metrics["seeds"] = seeds
    metrics["checkpoints"] = [str(f) for f in files]
    metrics["table"] = write_report(out, metrics, [r["test"] for r in per_seed], data.splits["test"].labels,
                                    cfg.eval_missing_rates, data=data)
    return {"test": metrics}
