"""A whole experiment: load and standardize the data, train one model per seed, sweep, report.

``run_experiment(cfg)`` is what the command line, ``train_v4.sh`` and ``tune.py`` all call.
Each seed lives in ``OUTPUT_DIR/seed_<seed>/`` (``last.pt``, ``best.pt``, ``result.json`` and
``result.npz`` once finished), so ``--resume`` skips finished seeds and continues the
interrupted one from its last epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from datasets import MODALITIES, DataError, MultimodalData, Standardizer, load_data, rate_key
from datasets.storage import cache_key, cached, to_dtype
from modules.registry import MODELS, available_models
from report.run_report import write_report
from training.atomic import write_json, write_npz
from training.calibration import Calibration
from training.checkpoint import CheckpointError
from training.config import RESUMABLE_CHANGES, Config, fields_in
from training.errors import ConfigError, OutputError, UserError, writing
from training.evaluate import Evaluator, aggregate, ensemble, prediction_note
from training.trainer import Trainer, frame_rates_for, load_for_eval, resolve_device
from training.tta import build_tta

log = logging.getLogger(__name__)

# (seed index, epoch, validation value) after every epoch; may raise to stop (Optuna pruning).
SeedEpochCallback = Callable[[int, int, float], None]

LOCK_FILE = ".lock"
SEED_FILES = ("last.pt", "best.pt", "result.json", "result_valid.npz", "result_test.npz")
# A standardized (or raw, with --no_standardize) feature beyond this is no measurement: float32
# arithmetic in the model overflows on it.
MAX_FEATURE_MAGNITUDE = 1e12


class RunExistsError(UserError):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


class RunLockedError(OutputError):
    """Another process is writing into the same output folder."""


def _describe(cfg: Config) -> str:
    # only the synthetic set is embedded; mosi/mosei without a path are refused by load_data
    if cfg.data_path:
        return cfg.data_path
    return "the embedded synthetic data set" if cfg.dataset == "synthetic" else f"--dataset {cfg.dataset}"


def load_raw(cfg: Config) -> MultimodalData:
    """The configured data, cleaned and checked but not standardized."""
    log.info("loading %s", _describe(cfg))
    data = load_data(cfg.dataset, cfg.data_path, cfg.data_format, cfg.synthetic_seed, cfg.nan_policy)
    log.info("loaded %s: train/valid/test %s samples, feature dims %s", data.source,
             "/".join(str(data.splits[s].n) for s in ("train", "valid", "test")), dict(data.dims))
    return data


def standardize(data: MultimodalData, cfg: Config, stats: dict | None = None) -> dict:
    """Standardize ``data`` in place with ``stats`` (a checkpoint's), or with train statistics when
    ``cfg.standardize``; then refuse features no model can compute with. Returns the statistics."""
    if stats:
        Standardizer.from_state_dict(stats).apply(data)
    elif cfg.standardize:
        std = Standardizer.fit(data.splits["train"])
        std.apply(data)
        stats = {k: torch.as_tensor(np.asarray(v)) for k, v in std.state_dict().items()}
    check_magnitudes(data)
    return stats or {}


def load_and_standardize(cfg: Config, stats: dict | None = None) -> tuple[MultimodalData, dict]:
    """Load the configured data and standardize it: with train statistics, or with ``stats``
    (the statistics a checkpoint carries). Returns the data and the statistics as tensors.
    Features are stored as ``cfg.feature_dtype``; with ``cfg.feature_cache`` they are read from
    (or written once to) a memory-mapped cache of the standardized splits."""
    if cfg.feature_cache:
        key = cache_key({**{k: getattr(cfg, k) for k in ("dataset", "data_path", "data_format", "synthetic_seed",
                                                          "nan_policy", "standardize", "feature_dtype")},
                         "stats": {k: np.asarray(v).tolist() for k, v in (stats or {}).items()}})
        return cached(cfg.feature_cache, key, lambda: _load_and_standardize(cfg, stats))
    return _load_and_standardize(cfg, stats)


def _load_and_standardize(cfg: Config, stats: dict | None) -> tuple[MultimodalData, dict]:
    data = load_raw(cfg)
    stats = standardize(data, cfg, stats)
    to_dtype(data, cfg.feature_dtype)
    return data, stats


def check_magnitudes(data: MultimodalData) -> None:
    """DataError naming the file, split and modality of finite features too large to compute with."""
    for name, split in data.splits.items():
        for m in MODALITIES:
            x = split.features(m)
            top = max(float(x.max()), -float(x.min())) if x.size else 0.0
            if top > MAX_FEATURE_MAGNITUDE:
                raise DataError(
                    f"{data.source} [split '{name}', key '{m}']: feature values reach {top:.3g} (after any "
                    f"standardization), beyond {MAX_FEATURE_MAGNITUDE:.0e} where the model's float32 arithmetic "
                    "overflows; fix or remove those values in the file")


def check_startable(cfg: Config) -> None:
    """What a start can refuse before it loads or writes anything (the CLI before it claims a run
    folder, tune.py before it opens the study, every run): an unknown model, a batch size the model
    cannot train with, a missing device, a ``--data_path`` or ``--checkpoint`` that is not there."""
    check_model_name(cfg.model)
    need = MODELS[cfg.model].min_batch_size
    if cfg.batch_size < need and not cfg.eval_only:
        raise ConfigError(f"--model {cfg.model} normalizes over the batch (BatchNorm): --batch_size must be >= {need}")
    resolve_device(cfg.device)
    for flag, path in (("--data_path", cfg.data_path), ("--checkpoint", cfg.checkpoint)):
        if path and not os.path.exists(path):
            raise ConfigError(f"{flag} {path}: no such file or folder")


def check_model_name(name: str) -> None:
    known = available_models()
    if name not in known:
        raise ConfigError(f"unknown --model {name!r}; available: {', '.join(known)}")


# Settings --eval_only takes from the command line (the data to evaluate on, the sweep, how it runs);
# every other one, standardization included, comes from the checkpoint.
EVAL_SETTINGS = (frozenset(fields_in("data", "run")) | {"batch_size", "eval_missing_rates",
                                                         "eval_frame_missing_rates", "tta", "tta_steps",
                                                         "tta_lr", "tta_params"}) - {"standardize"}


def resume_conflicts(saved: dict, cfg: Config) -> list[str]:
    """``"name saved -> now"`` for every setting that differs from the run being resumed (a
    setting the saved config predates counts as its default)."""
    now, default = cfg.to_dict(), Config().to_dict()
    return [f"{k} {saved.get(k, default[k])!r} -> {now[k]!r}" for k in now
            if k not in RESUMABLE_CHANGES and saved.get(k, default[k]) != now[k]]


def _read_config(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
        Config.from_dict(saved)
    except (OSError, ValueError, TypeError) as err:
        raise RunExistsError(f"--resume: cannot read {path} ({err}); restore it, or start the run again with "
                             f"--overwrite") from None
    return saved


def resume_settings(cfg: Config, given: set[str]) -> Config:
    """``--resume --output_dir X``: the settings X's run was started with (its ``config.json``),
    with the flags ``given`` on the command line on top. ``check_output_dir`` then refuses a
    given flag that would change what the run trains or measures."""
    path = Path(cfg.output_dir) / "config.json"
    if not cfg.resume:
        return cfg
    if not path.is_file():  # the same command starts a job and continues it (a preemptible machine)
        held = held_run(Path(cfg.output_dir))
        if held:  # a run whose settings are gone (or an --eval_only report): never replace it by a default run
            raise RunExistsError(f"--resume: {cfg.output_dir} holds a run ({', '.join(held[:3])}) but no config.json, "
                                 f"so its settings are unknown; restore config.json, or pass --overwrite or another "
                                 f"--output_dir")
        log.warning("--resume: %s holds no run yet; starting one there with these settings", cfg.output_dir)
        return cfg
    saved = Config.from_dict(_read_config(path))
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in given | {"resume", "output_dir", "overwrite"}})


def held_run(out: Path) -> list[str]:
    """The files that make ``out`` hold a run: its report, or a seed that started training
    (a ``config.json`` alone, left by a start that failed, does not count)."""
    if not out.is_dir():
        return []
    found = [p for p in ("metrics.json",) if (out / p).exists()]
    return found + sorted({str(p.parent.relative_to(out) / p.name) for p in out.glob("seed_*/*")
                           if p.name in SEED_FILES})


def check_output_dir(cfg: Config) -> None:
    """Refuse to start in a folder holding another run (unless --resume or --overwrite), and
    refuse --resume with settings that would change what the run trains or measures."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output_dir {out} is a file; choose a folder")
    previous = held_run(out)
    if previous and not (cfg.resume or cfg.overwrite):
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(previous[:3])}); pass --resume to continue it, "
            f"--overwrite to replace it, or another --output_dir")
    if cfg.resume and previous and (out / "config.json").exists():
        saved = _read_config(out / "config.json")
        dropped = [s for s in saved.get("seeds", []) if s not in cfg.seeds]
        if dropped:  # its report would lose them
            raise RunExistsError(f"--resume: --seeds {' '.join(map(str, cfg.seeds))} leaves out seed(s) "
                                 f"{' '.join(map(str, dropped))} of {out}; give all of its seeds (you may add more), "
                                 f"or pass --overwrite or another --output_dir")
        changed = resume_conflicts(saved, cfg)
        if changed:
            raise RunExistsError(
                f"--resume: {out} was started with other settings ({'; '.join(changed[:5])}"
                f"{'; ...' if len(changed) > 5 else ''}); resume with the same flags, or pass --overwrite "
                f"or another --output_dir")


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Create ``out`` and hold an exclusive lock on it: a second process into the same folder gets
    RunLockedError instead of mixing its files with ours. The lock goes with the process. A folder
    made here (with the parent folders made for it) is removed again when the run fails before
    writing anything into it."""
    absolute = Path(os.path.abspath(out))  # "a/../b" is b: never a folder that was already there
    made = [p for p in (absolute, *absolute.parents) if not p.exists()]  # deepest first
    locked = False
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            raise RunLockedError(f"{out} is in use by another run (process {pid}); wait for it to finish, or "
                                 f"choose another --output_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        locked = True
        yield
    except Exception:
        if made and locked:
            fh.close()  # our lock goes, so the removal below can take it
            if remove_unused_run_folder(out):
                for parent in made[1:]:
                    with contextlib.suppress(OSError):  # not empty (something else appeared there): kept
                        parent.rmdir()
        raise
    finally:
        fh.close()


def remove_unused_run_folder(out: Path) -> bool:
    """Remove ``out`` if it holds nothing but the run lock and no process holds that lock (a run that
    failed before writing anything); whether it did. A folder in use, or one where something appeared
    meanwhile, is left alone."""
    try:
        if not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir()):
            return False
        with open(out / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: another process works there
            (out / LOCK_FILE).unlink()
        out.rmdir()
        return True
    except OSError:
        return False


def _start_run(cfg: Config, out: Path) -> None:
    """The moment the folder starts to hold this run: the first seed is about to train."""
    if cfg.overwrite:
        for p in [out / "metrics.json", *out.glob("seed_*/*")]:
            if p.name in (*SEED_FILES, "metrics.json") and p.exists():
                p.unlink()
    with writing(out / "config.json"):
        write_json(cfg.to_dict(), out / "config.json")


def _save_seed_result(run_dir: Path, result: dict) -> None:
    """``result.json`` plus ``result_<split>.npz`` (the arrays), each written atomically."""
    arrays = {name: result[name].pop("arrays") for name in ("valid", "test") if name in result}
    try:
        with writing(run_dir):
            for name, arr in arrays.items():
                write_npz(run_dir / f"result_{name}.npz", **arr)
            write_json(result, run_dir / "result.json")
    finally:
        for name, arr in arrays.items():
            result[name]["arrays"] = arr


def _load_seed_result(run_dir: Path, splits: tuple[str, ...]) -> dict | None:
    path = run_dir / "result.json"
    if not path.exists():
        return None
    advice = (f"delete {path} and rerun with --resume: the seed's results are computed again from "
              f"{run_dir / 'best.pt'}")
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict):
            raise ValueError(f"holds a {type(result).__name__}")
    except (OSError, ValueError) as err:
        raise RunExistsError(f"{path} is truncated or unreadable ({err}); {advice}") from None
    if any(s not in result for s in splits):
        return None
    for name in splits:
        npz = run_dir / f"result_{name}.npz"
        try:
            with np.load(npz) as z:
                result[name]["arrays"] = {k: z[k] for k in z.files}
        except Exception as err:  # missing, truncated (BadZipFile) or foreign
            raise RunExistsError(f"{npz} is missing, truncated or unreadable ({type(err).__name__}); "
                                 f"{advice}") from None
    return result


def _writer(cfg: Config, seed: int):
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(cfg.output_dir) / "tb" / f"seed_{seed}"))


def _metrics(cfg: Config, per_seed: list[dict], split: str, train_seconds: float,
             labels: np.ndarray | None = None) -> dict:
    results, std = aggregate([r[split] for r in per_seed])
    cal = per_seed[0].get("calibration") if split == "test" else None  # valid is swept uncalibrated
    out = {"config": cfg.to_dict(), "seeds": list(cfg.seeds), "split": split, "results": results,
           "std": std, "train_seconds": train_seconds,
           "best_epochs": [r.get("best_epoch") for r in per_seed],
           "calibration": [r.get("calibration") for r in per_seed],
           "prediction": prediction_note(cfg.task, None if cal is None else Calibration.from_state_dict(cal))}
    if cfg.ensemble and len(per_seed) > 1 and labels is not None and \
            all("p_pos" in r[split]["arrays"] for r in per_seed):  # seeds finished before p_pos: none
        out["ensemble"] = ensemble([r[split] for r in per_seed], labels)
    return out


def run_experiment(cfg: Config, on_epoch: SeedEpochCallback | None = None,
                   splits: tuple[str, ...] = ("valid", "test"), data: MultimodalData | None = None,
                   stats: dict | None = None) -> dict:
    """Train every seed of ``cfg`` and sweep ``splits``; returns ``{split: metrics}``.

    With ``"test"`` in ``splits`` it writes the report into ``cfg.output_dir`` and adds the
    printed table under ``"table"``. ``data``/``stats`` let a caller reuse loaded data. The
    folder is locked for the whole run; ``config.json`` is written when the first seed starts.
    """
    out = Path(cfg.output_dir)
    check_startable(cfg)
    with run_lock(out):
        check_output_dir(cfg)
        if data is None:
            data, stats = load_and_standardize(cfg)
        if data.splits["train"].n < 2:  # no batch of one: it would train no step at all
            raise DataError(f"{data.source}: the training split holds {data.splits['train'].n} sample; training "
                            f"needs at least 2")
        if "test" in splits:
            _note_frame_sweep(data, cfg.eval_frame_missing_rates)
        per_seed = []
        started = False
        t0 = time.perf_counter()
        for i, seed in enumerate(cfg.seeds):
            run_dir = out / f"seed_{seed}"
            result = _load_seed_result(run_dir, splits) if cfg.resume else None
            if result is None:
                trainer = Trainer(cfg, data, seed, run_dir, stats, progress=not cfg.quiet)
                trainer.label = f"seed {seed} ({i + 1} of {len(cfg.seeds)})"
                if not started:
                    _start_run(cfg, out)
                    started = True
                with writing(run_dir):
                    run_dir.mkdir(parents=True, exist_ok=True)
                trainer.writer = writer = _writer(cfg, seed)
                try:
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
            else:
                log.info("seed %d (%d of %d): finished earlier, results read from %s", seed, i + 1,
                         len(cfg.seeds), run_dir)
            per_seed.append(result)
        train_seconds = time.perf_counter() - t0
        metrics = {s: _metrics(cfg, per_seed, s, train_seconds, data.splits[s].labels) for s in splits}
        if "test" in splits:
            test = metrics["test"]
            test["validation"] = metrics["valid"]["results"] if "valid" in metrics else {}
            if "ensemble" in metrics.get("valid", {}):
                test["validation_ensemble"] = metrics["valid"]["ensemble"]
            with writing(out):
                test["table"] = write_report(out, test, [r["test"] for r in per_seed],
                                             data.splits["test"].labels, cfg.eval_missing_rates, data=data)
    return metrics


def _note_frame_sweep(data: MultimodalData, rates: list[float]) -> None:
    if rates and not frame_rates_for(data.splits["test"], rates):
        log.info("note: every test sequence has one step (utterance-level features), so the frame-level "
                 "sweep is skipped: erasing frames keeps one step per sequence, and every rate would repeat r = 0")


def _log_hparams(writer, cfg: Config, result: dict) -> None:
    hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}
    test = result["test"]
    final = {f"hparam/test_p{rate_key(p)}": v["acc2_non0"] for p in (0.0, 0.5)
             if (v := test["missing_rate"].get(rate_key(p)))}
    final["hparam/best_val"] = result["best_value"]
    writer.add_hparams(hp, final, run_name=".")


def _run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/seed_<s>/best.pt`` -> ``RUN``)."""
    if checkpoint.is_dir():
        return checkpoint
    return checkpoint.parent.parent if checkpoint.parent.name.startswith("seed_") else checkpoint.parent


def eval_output_dir(cfg: Config, run_dir: Path, given: set[str] | None) -> Path:
    """Where ``--eval_only`` writes: ``--output_dir`` when given, else a new folder beside the
    evaluated run (``RUN_eval_<data>``, ``_2``, ... when taken); never the run's own folder."""
    if cfg.output_dir is not None and (given is None or "output_dir" in given):
        out = Path(cfg.output_dir)
    else:
        src = Path(cfg.data_path.rstrip("/")).stem if cfg.data_path else cfg.dataset
        base = run_dir.parent / f"{run_dir.name}_eval_{src}"
        out, k = base, 1
        while held_run(out) or (out.exists() and not out.is_dir()):
            k += 1
            out = base.with_name(f"{base.name}_{k}")
    if run_dir.resolve() == out.resolve() or (held_run(run_dir) and run_dir.resolve() in out.resolve().parents):
        raise OutputError(f"--output_dir {out} is inside the folder of the run being evaluated; --eval_only never "
                          f"writes there: choose another --output_dir (or leave it out for a new folder)")
    return out


def eval_conflicts(saved: Config, cfg: Config, given: set[str] | None) -> list[str]:
    """Flags given with --eval_only that contradict what the checkpoint was trained with."""
    return [f"--{k} {getattr(cfg, k)!r} (trained with {getattr(saved, k)!r})"
            for k in sorted((given or set()) - EVAL_SETTINGS) if getattr(cfg, k) != getattr(saved, k)]


def evaluate_checkpoints(cfg: Config, given: set[str] | None = None) -> dict:
    """``--eval_only``: evaluate ``cfg.checkpoint`` (a best.pt, a seed folder holding one, or a run
    folder of seed_*/best.pt) on the test split of ``cfg``'s data.

    Everything that shaped training (model, losses, standardization and its statistics, task)
    comes from the checkpoint; ``cfg`` gives only ``EVAL_SETTINGS``. ``given`` names the flags
    given on the command line: one of them that contradicts the checkpoint is refused, and without
    ``output_dir`` among them the report goes to a new folder (``eval_output_dir``).
    """
    check_startable(cfg)  # the checkpoint is there (the CLI checked before claiming its folder)
    path = Path(cfg.checkpoint)
    if path.is_dir() and not any(path.glob("seed_*/best.pt")) and (path / "best.pt").is_file():
        path = path / "best.pt"  # one seed's folder, seed_<s>/
    files = sorted(path.glob("seed_*/best.pt")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path} holds no seed_*/best.pt checkpoint; give a run folder of a finished "
                              f"training run, one of its seed_<s> folders, or a best.pt")
    device = resolve_device(cfg.device)
    out = eval_output_dir(cfg, _run_folder(path), given)
    with run_lock(out):
        check_output_dir(dataclasses.replace(cfg, output_dir=str(out), resume=False))
        per_seed, seeds, data, first, effective, unfinished = [], [], None, None, cfg, []
        for f in files:
            model, saved, stats, cal, dims = load_for_eval(f, device)
            conflicts = eval_conflicts(saved, cfg, given)
            if conflicts:
                raise ConfigError(f"--eval_only: {'; '.join(conflicts)} contradicts the checkpoint {f}; drop "
                                  "the flag: what shaped training comes from the checkpoint")
            if data is None:
                data, first = load_raw(cfg), (dims, stats)
                if dict(data.dims) != dims:
                    raise DataError(f"{data.source} has feature dims {dict(data.dims)} but the checkpoint {f} was "
                                    f"trained on {dims}; evaluate it on data from the same feature extractors")
                standardize(data, dataclasses.replace(saved, standardize=False), stats)  # never refit
                effective = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in EVAL_SETTINGS})
                _note_frame_sweep(data, cfg.eval_frame_missing_rates)
            elif dims != first[0] or not _same_stats(stats, first[1]):
                raise CheckpointError(f"{f} was trained on other features or statistics than {files[0]}; "
                                      "evaluate the two with separate --eval_only runs")
            log.info("evaluating %s on %s (%d samples)", f, data.source, data.splits["test"].n)
            if f.parent.name.startswith("seed_") and not (f.parent / "result.json").exists():
                unfinished.append(str(f))
                log.warning("%s did not finish training (no result.json beside it): its best.pt is the best epoch "
                            "so far; finish it first with --resume --output_dir %s", f.parent, f.parent.parent)
            test = data.splits["test"]
            evaluator = Evaluator.from_config(model, effective, device, cal, build_tta(effective, model))
            res = evaluator.sweep(test, cfg.eval_missing_rates, frame_rates_for(test, cfg.eval_frame_missing_rates))
            per_seed.append({"test": res, "calibration": {k: v.tolist() for k, v in cal.state_dict().items()}})
            seeds.append(int(f.parent.name.split("_")[-1]) if f.parent.name.startswith("seed_") else saved.seeds[0])
        metrics = _metrics(effective, per_seed, "test", 0.0, data.splits["test"].labels)
        metrics["seeds"] = seeds
        metrics["prediction"] = prediction_note(saved.task, cal)
        metrics["checkpoints"] = [str(f) for f in files]
        metrics["unfinished_checkpoints"] = unfinished  # python -m report warns about them
        with writing(out):
            metrics["table"] = write_report(out, metrics, [r["test"] for r in per_seed], data.splits["test"].labels,
                                            cfg.eval_missing_rates, data=data)
    return {"test": metrics, "output_dir": str(out)}


def _same_stats(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
