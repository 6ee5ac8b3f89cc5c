"""``python tune.py [flags]``: Optuna hyperparameter search over the one training ``Config``.

Every training flag of ``attention_robust_v4.py`` is accepted (the parser is built by
``training.config.add_config_arguments``); a flag given on the command line is fixed for all trials
and leaves the search space. A trial fills the same dataclass: ``dataclasses.replace(base, **params)``
then ``validate()``. Trials train on train, select their epoch on valid and are scored on valid only;
the test split is touched once, at the end, when the best trial is retrained into ``OUTPUT_DIR/best/``.

The study lives in an Optuna RDB storage (``OUTPUT_DIR/study.db`` by default, or any ``--storage``
URL such as PostgreSQL), so a rerun with the same ``--study_name`` adds trials and several processes
on one or many machines can share one study. A trial whose process died is failed (and retried once)
by the next process: at once when the dead process ran on the same machine, otherwise when its
heartbeat is older than ``--grace_period``.

Outputs: ``best.json`` (value, params, a ready ``bash train_v4.sh ...`` command, the test results of
the retrained best trial), ``trials.csv``, ``plots/`` (history and importance; HTML with plotly, PNG
with matplotlib otherwise) and ``trials/trial_<n>/`` (one run folder per trial, TensorBoard in each).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from datasets import rate_key
from training.config import Config, add_config_arguments, config_to_argv
from training.evaluate import ROBUST_RATES
from training.run import load_and_standardize, run_experiment

log = logging.getLogger("tune")

METRICS = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece")
MINIMIZED_METRICS = ("mae", "ece")
# name -> (metric, missing rates averaged, natural direction)
OBJECTIVES: dict[str, tuple[str, tuple[float, ...], str]] = {
    "f1_robust": ("f1_non0", ROBUST_RATES, "maximize"),
    "f1_full": ("f1_non0", (0.0,), "maximize"),
    "acc2_robust": ("acc2_non0", ROBUST_RATES, "maximize"),
    "acc2_full": ("acc2_non0", (0.0,), "maximize"),
    "mae": ("mae", ROBUST_RATES, "minimize"),
    "ece": ("ece", ROBUST_RATES, "minimize"),
    "corr": ("corr", ROBUST_RATES, "maximize"),
    "acc7": ("acc7", ROBUST_RATES, "maximize"),
}
# objectives whose per-epoch validation value the trainer can compute itself (--select_metric)
SELECT_METRIC_OF = {"f1_robust": "f1_robust", "f1_full": "f1_full", "acc2_robust": "acc2_robust", "mae": "mae"}
OBJECTIVE_HELP = (f"what a trial maximises or minimises, on valid: {', '.join(OBJECTIVES)} "
                  f"(*_robust and mae/ece/corr/acc7: mean over missing rates {', '.join(map(str, ROBUST_RATES))}; "
                  f"*_full: p = 0) or METRIC@P for one rate (METRIC in {', '.join(METRICS)}); "
                  "several names make a multi-objective study")

# Config fields that describe the data, the run folder or the evaluation protocol, never a model.
NOT_SEARCHABLE = frozenset({
    "dataset", "data_path", "data_format", "synthetic_seed", "nan_policy", "standardize", "model", "seeds",
    "device", "eval_missing_rates", "eval_frame_missing_rates", "output_dir", "eval_only", "checkpoint",
    "resume", "overwrite", "quiet", "tensorboard", "select_metric",
})
# Run-folder fields a trial sets itself; they are restored from the command line for the final run.
RUN_FIELDS = ("output_dir", "quiet", "overwrite", "resume", "eval_frame_missing_rates")

HIDDEN_DIM_CHOICES = (32, 64, 128, 256)
# The default search space: the model and loss flags, log scale for rates, weights and temperatures.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "hidden_dim": {"type": "categorical", "choices": list(HIDDEN_DIM_CHOICES)},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "encoder": {"type": "categorical", "choices": ["mlp", "lstm"]},
    "fusion_temperature": {"type": "float", "low": 0.3, "high": 3.0, "log": True},
    "gate_alpha": {"type": "float", "low": 0.0, "high": 1.0},
    "contrastive_weight": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "contrastive_temperature": {"type": "float", "low": 0.03, "high": 0.5, "log": True},
    "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "aecf_mask_prob": {"type": "float", "low": 0.0, "high": 0.4},
    "aecf_entropy_target": {"type": "float", "low": 0.3, "high": 0.95},
    "entropy_weight": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "vae_weight": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "kl_weight": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "unimodal_weight": {"type": "float", "low": 0.0, "high": 2.0},
    "train_missing_rate": {"type": "float", "low": 0.0, "high": 0.8},
}
# A feature switched off on the command line takes its parameters out of the default space.
FEATURE_PARAMS = {
    "use_gated_fusion": ("gate_alpha",),
    "use_contrastive": ("contrastive_weight", "contrastive_temperature"),
    "use_aecf": ("aecf_mask_prob", "aecf_entropy_target", "entropy_weight"),
    "use_vae": ("vae_weight", "kl_weight"),
}
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}

# Optuna >= 4.9 renamed the retry callback and the RDBStorage argument that takes it.
if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
    RetryCallback: Any = optuna.storages.RetryHeartbeatStaleTrialCallback
    STALE_CALLBACK_ARG = "heartbeat_stale_trial_callback"
else:  # pragma: no cover - older Optuna
    RetryCallback = optuna.storages.RetryFailedTrialCallback
    STALE_CALLBACK_ARG = "failed_trial_callback"

_UNSET = object()  # marks a config flag that was not given on the command line


class TuneError(Exception):
    """Bad input or an unusable study, reported as one line on stderr."""


# ---- command line -------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def build_tune_parser() -> argparse.ArgumentParser:
    """Every Config flag (the same parser the training CLI uses) plus the search flags."""
    parser = argparse.ArgumentParser(
        prog="tune.py", formatter_class=_HelpFormatter,
        description="Optuna search over the AttentionRobust config. Config flags given here are fixed "
                    "for every trial and leave the search space; --output_dir defaults to runs/tune_<study>.")
    g = parser.add_argument_group("search")
    g.add_argument("--n_trials", type=int, default=None,
                   help="trials to run in this process, added to the study (default 20 unless --timeout)")
    g.add_argument("--timeout", type=float, default=None, help="stop starting trials after SECONDS (default: no limit)")
    g.add_argument("--storage", default=None,
                   help="Optuna RDB URL shared by every worker (default sqlite:///OUTPUT_DIR/study.db), "
                        "e.g. postgresql+psycopg2://user:pass@host:5432/db")
    g.add_argument("--study_name", default=None, help="study to create or resume (default <model>_<data>)")
    g.add_argument("--search_space", default=None, metavar="FILE",
                   help="YAML or JSON {name: {type: float|int|categorical, low, high, log, step, choices}} "
                        "replacing the default space")
    g.add_argument("--objective", nargs="+", default=["f1_robust"], metavar="NAME", help=OBJECTIVE_HELP)
    g.add_argument("--directions", nargs="+", default=None, choices=["maximize", "minimize"],
                   help="one per objective (default: maximize, minimize for mae and ece)")
    g.add_argument("--sampler_seed", type=int, default=None,
                   help="seed of the TPE sampler (default: random; give each worker of a shared study "
                        "its own)")
    g.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stop bad trials early from the first seed's per-epoch validation value")
    g.add_argument("--pruner_startup_trials", type=int, default=3,
                   help="median pruner: trials that finish before any pruning")
    g.add_argument("--heartbeat_interval", type=int, default=30,
                   help="seconds between a running trial's heartbeats in the storage (0 disables)")
    g.add_argument("--grace_period", type=int, default=None,
                   help="a running trial without a heartbeat for this long is failed and retried "
                        "(default 3 x heartbeat interval)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads of this process (0: torch's default); with K workers on one "
                        "machine give each about cores / K")
    g.add_argument("--skip_final_eval", action="store_true",
                   help="do not retrain the best trial and evaluate it on test (extra workers)")
    add_config_arguments(parser.add_argument_group("training (fixed for every trial when given)"))
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config, set[str]]:
    """Parse argv into (search flags, base Config, names of the config flags given explicitly).

    The config flags are parsed into a namespace pre-filled with a sentinel, so a flag keeps the
    sentinel exactly when it was not on the command line (even when given its default value).
    """
    parser = build_tune_parser()
    names = [f.name for f in dataclasses.fields(Config)]
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, _UNSET)))
    given = {n: getattr(ns, n) for n in names if getattr(ns, n) is not _UNSET}
    for n in names:
        delattr(ns, n)
    if ns.n_trials is not None and ns.n_trials < 0:
        parser.error("--n_trials must be >= 0")
    if ns.timeout is not None and ns.timeout <= 0:
        parser.error("--timeout must be > 0")
    if ns.threads < 0:
        parser.error("--threads must be >= 0")
    if ns.heartbeat_interval < 0 or (ns.grace_period is not None and ns.grace_period <= 0):
        parser.error("--heartbeat_interval must be >= 0 and --grace_period > 0")
    for name in ns.objective:
        try:
            objective_spec(name)
        except TuneError as err:
            parser.error(str(err))
    if ns.directions is None:
        ns.directions = [objective_spec(o)[2] for o in ns.objective]
    elif len(ns.directions) != len(ns.objective):
        parser.error(f"--directions needs one direction per objective ({len(ns.objective)}), "
                     f"got {len(ns.directions)}")
    if len(set(ns.objective)) != len(ns.objective):
        parser.error("--objective names an objective twice")
    try:
        base = Config(**given)
        if "hidden_dim" not in given and base.num_heads > 0 and base.hidden_dim % base.num_heads:
            base.hidden_dim = base.num_heads * max(1, round(base.hidden_dim / base.num_heads))
        base.validate()
    except ValueError as err:
        parser.error(str(err))
    if ns.study_name is None:
        src = Path(base.data_path).stem if base.data_path else base.dataset
        ns.study_name = f"{base.model}_{src}"
    if "output_dir" not in given:
        base.output_dir = str(Path("runs") / f"tune_{ns.study_name}")
    return ns, base, set(given)


# ---- objectives -----------------------------------------------------------------------------------
def objective_spec(name: str) -> tuple[str, tuple[float, ...], str]:
    """(metric, rates, natural direction) of an objective name, e.g. ``f1_robust`` or ``mae@0.5``."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    m = re.fullmatch(r"(\w+)@([0-9.]+)", name)
    if m and m.group(1) in METRICS:
        try:
            p = float(m.group(2))
        except ValueError:
            p = -1.0
        if 0.0 <= p < 1.0:
            metric = m.group(1)
            return metric, (p,), "minimize" if metric in MINIMIZED_METRICS else "maximize"
    raise TuneError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)} or METRIC@P with "
                    f"METRIC in {', '.join(METRICS)} and 0 <= P < 1")


def objective_value(name: str, results: dict) -> float:
    """The objective ``name`` of a ``results`` block (``metrics["results"]`` of a split)."""
    metric, rates, _ = objective_spec(name)
    per_rate = results["missing_rate"]
    missing = [rate_key(p) for p in rates if rate_key(p) not in per_rate]
    if missing:
        raise KeyError(f"results lack missing rates {', '.join(missing)} needed by objective {name}")
    return float(sum(per_rate[rate_key(p)][metric] for p in rates) / len(rates))


def objective_rates(objectives: list[str]) -> set[float]:
    """The missing rates the objectives read."""
    return {p for o in objectives for p in objective_spec(o)[1]}


# ---- search space ---------------------------------------------------------------------------------
def _field_types() -> dict[str, Any]:
    """Config field -> its base type (``int | None`` -> int, ``list[int]`` -> list)."""
    hints = typing.get_type_hints(Config)
    out = {}
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        out[f.name] = tp if typing.get_origin(tp) is None else (list if typing.get_origin(tp) is list else args[0])
    return out


def searchable_fields() -> list[str]:
    """The Config fields a search space may name."""
    return [f.name for f in dataclasses.fields(Config) if f.name not in NOT_SEARCHABLE]


def load_search_space(path: str) -> dict[str, dict[str, Any]]:
    """Read a YAML or JSON search space file; TuneError on an unreadable or malformed file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else err
        raise TuneError(f"cannot read search space file {path}: {reason}") from None
    try:
        if path.endswith(".json"):
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TuneError(f"search space file {path} is not valid YAML/JSON: {first}") from None
    if not isinstance(raw, dict) or not raw:
        raise TuneError(f"search space file {path} must hold a non-empty mapping {{name: {{type, low, high, ...}}}}")
    return {str(k): v for k, v in raw.items()}


def normalise_space(raw: dict[str, Any], base: Config, source: str) -> dict[str, dict[str, Any]]:
    """Check every entry against the Config fields and their types; fill in ``type`` when implied.

    A bare list is a categorical choice. Each bound and choice is validated on its own against
    ``base`` so an impossible range (``dropout`` up to 1) fails now rather than in every trial.
    """
    fields = _field_types()
    valid = searchable_fields()
    space: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        if name not in fields:
            raise TuneError(f"{source}: unknown parameter {name!r}; valid Config fields: {', '.join(valid)}")
        if name in NOT_SEARCHABLE:
            raise TuneError(f"{source}: {name} describes the data or the run and cannot be searched; "
                            f"valid Config fields: {', '.join(valid)}")
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise TuneError(f"{source}: {name} must be a mapping {{type, low, high, log, step, choices}} or a list")
        extra = set(spec) - SPEC_KEYS
        if extra:
            raise TuneError(f"{source}: {name} has unknown keys {', '.join(sorted(extra))} "
                            f"(allowed: {', '.join(sorted(SPEC_KEYS))})")
        spec = dict(spec)
        ftype = fields[name]
        kind = spec.get("type") or ("categorical" if "choices" in spec else
                                    "int" if ftype is int else "float")
        spec["type"] = kind
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise TuneError(f"{source}: {name} (categorical) needs a non-empty list 'choices'")
            for c in choices:
                ok = (isinstance(c, bool) if ftype is bool else
                      isinstance(c, int) and not isinstance(c, bool) if ftype is int else
                      isinstance(c, (int, float)) and not isinstance(c, bool) if ftype is float else
                      isinstance(c, str) if ftype is str else False)
                if not ok:
                    raise TuneError(f"{source}: {name} choice {c!r} is not a valid {getattr(ftype, '__name__', ftype)}")
            values = list(choices)
        elif kind in ("float", "int"):
            if ftype not in (int, float) or (kind == "float" and ftype is int):
                raise TuneError(f"{source}: {name} is a {getattr(ftype, '__name__', ftype)} field; "
                                f"use type {'int' if ftype is int else 'categorical'}")
            low, high = spec.get("low"), spec.get("high")
            num = (int,) if kind == "int" else (int, float)
            if not all(isinstance(v, num) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise TuneError(f"{source}: {name} ({kind}) needs numbers low < high, got low={low!r} high={high!r}")
            if spec.get("log") and low <= 0:
                raise TuneError(f"{source}: {name} has log: true, so low must be > 0")
            if spec.get("log") and spec.get("step") is not None:
                raise TuneError(f"{source}: {name} cannot have both log and step")
            values = [low, high]
        else:
            raise TuneError(f"{source}: {name} has type {kind!r}; use float, int or categorical")
        space[name] = spec
        for v in values:
            try:
                dataclasses.replace(base, **{name: v}).validate()
            except ValueError as err:
                others = [o for o in raw if o != name and o in str(err)]
                if not others:  # a combination with another searched value may still be valid
                    raise TuneError(f"{source}: {name}={v!r} is out of range: {err}") from None
    return space


def default_space(base: Config, fixed: set[str]) -> dict[str, dict[str, Any]]:
    """The default space minus the fixed flags and the parameters of switched-off features;
    hidden_dim choices are kept to multiples of num_heads."""
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items() if k not in fixed}
    for switch, params in FEATURE_PARAMS.items():
        if not getattr(base, switch):
            for p in params:
                space.pop(p, None)
    if "hidden_dim" in space:
        choices = [h for h in HIDDEN_DIM_CHOICES if h % base.num_heads == 0]
        space["hidden_dim"]["choices"] = choices or [base.num_heads * k for k in (8, 16, 32, 64)]
    return space


def build_space(ns: argparse.Namespace, base: Config, fixed: set[str]) -> dict[str, dict[str, Any]]:
    """The default space, or the --search_space file checked against Config, minus the fixed flags."""
    if ns.search_space is None:
        return default_space(base, fixed)
    space = normalise_space(load_search_space(ns.search_space), base, ns.search_space)
    dropped = sorted(set(space) & fixed)
    if dropped:
        log.info("fixed on the command line, left out of the search space: %s", ", ".join(dropped))
    space = {k: v for k, v in space.items() if k not in fixed}
    return space


def suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    """Draw one parameter of the space from the trial."""
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                 log=bool(spec.get("log", False)))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                               log=bool(spec.get("log", False)))


def search_base(base: Config, fixed: set[str], objectives: list[str]) -> Config:
    """The config every trial starts from: the objective's missing rates are evaluated, and the
    epoch selection follows the (first) objective unless --select_metric was given."""
    rates = sorted(set(base.eval_missing_rates) | objective_rates(objectives))
    cfg = dataclasses.replace(base, eval_missing_rates=rates)
    if "select_metric" not in fixed and objectives[0] in SELECT_METRIC_OF:
        cfg.select_metric = SELECT_METRIC_OF[objectives[0]]
    cfg.validate()
    return cfg


def trial_config(start: Config, params: dict[str, Any], out: Path, number: int) -> Config:
    """The trial's config: the search base with the params, training quietly into trials/trial_<n>/."""
    cfg = dataclasses.replace(start, **params, output_dir=str(out / "trials" / f"trial_{number}"), quiet=True,
                              overwrite=True, resume=False, eval_frame_missing_rates=[0.0])
    cfg.validate()
    return cfg


def final_config(trial: FrozenTrial, start: Config, output_dir: str, quiet: bool) -> Config:
    """The full config of a finished trial for a normal run (the run fields from the command line)."""
    try:
        cfg = Config.from_dict(trial.user_attrs["config"])
    except (KeyError, TypeError, ValueError):  # stored by an older Config, or not at all
        cfg = dataclasses.replace(start, **trial.params)
    return dataclasses.replace(cfg, output_dir=output_dir, quiet=quiet, overwrite=False, resume=False,
                               eval_frame_missing_rates=list(start.eval_frame_missing_rates))


def train_command(cfg: Config) -> str:
    """``bash train_v4.sh FLAGS`` rebuilding ``cfg`` (paths absolute: the script changes directory)."""
    cfg = dataclasses.replace(cfg, output_dir=os.path.abspath(cfg.output_dir), quiet=False,
                              data_path=os.path.abspath(cfg.data_path) if cfg.data_path else None)
    argv = config_to_argv(cfg)
    if "--output_dir" not in argv:
        argv += ["--output_dir", cfg.output_dir]
    return "bash train_v4.sh " + shlex.join(argv)


# ---- storage ---------------------------------------------------------------------------------------
def mask_url(url: str) -> str:
    """The storage URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat_interval: int, grace_period: int | None) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats (a dead worker's trial is failed, then retried once)."""
    sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
    hb = heartbeat_interval or None
    kwargs: dict[str, Any] = {}
    if hb:
        kwargs = {"heartbeat_interval": hb, "grace_period": grace_period or 3 * hb,
                  STALE_CALLBACK_ARG: RetryCallback(max_retry=1)}
    last: Exception | None = None
    for attempt in range(8):  # concurrent first starts may race on creating the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as err:
            last = err
            text = str(err).lower()
            if not ("locked" in text or "already exists" in text or "duplicate" in text or "unique" in text):
                break
            time.sleep(0.5 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if last is not None and str(last).strip() else type(last).__name__
    raise TuneError(f"cannot open --storage {mask_url(url)}: {first}")


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host, boot, PID namespace, pid and the process start time (Linux)."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    with contextlib.suppress(OSError, IndexError, ValueError):
        ident["boot"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ident["pidns"] = os.stat("/proc/self/ns/pid").st_ino
        ident["start"] = _start_time(os.getpid())
    return ident


def _start_time(pid: int) -> int:
    """Start time of a process in clock ticks after boot (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_dead_here(worker: dict[str, Any], me: dict[str, Any]) -> bool:
    """True when ``worker`` ran on this machine (same host, boot and PID namespace) and is gone."""
    if not all(k in worker and k in me for k in ("host", "boot", "pidns", "start")):
        return False
    if (worker["host"], worker["boot"], worker["pidns"]) != (me["host"], me["boot"], me["pidns"]):
        return False
    if worker["pid"] == me["pid"] and worker["start"] == me["start"]:
        return False
    try:
        return _start_time(int(worker["pid"])) != worker["start"]
    except (OSError, IndexError, ValueError):
        return True


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail (and retry once) the RUNNING trials whose process on this machine has died; the
    heartbeat covers the other machines. Returns the failed trial numbers."""
    me = worker_identity()
    retry = RetryCallback(max_retry=1)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead_here(t.user_attrs.get("worker", {}), me):
            continue
        # another worker may have finished or failed the trial since we listed it
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "its process died")
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                retry(study, study._storage.get_trial(t._trial_id))
    return failed


def create_or_load_study(ns: argparse.Namespace, storage: optuna.storages.RDBStorage,
                         pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study or resume it (load_if_exists); its objectives and directions must match."""
    sampler = optuna.samplers.TPESampler(seed=ns.sampler_seed)
    try:
        study = optuna.create_study(storage=storage, study_name=ns.study_name, sampler=sampler, pruner=pruner,
                                    directions=ns.directions, load_if_exists=True)
    except Exception as err:
        raise TuneError(f"cannot create or load study {ns.study_name!r} in {mask_url(storage.url)}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    want = [d.upper() for d in ns.directions]
    have = [d.name for d in study.directions]
    stored = study.user_attrs.get("objectives")
    if have != want or (stored is not None and stored != list(ns.objective)):
        raise TuneError(f"study {ns.study_name!r} already exists with objectives {stored} and directions "
                        f"{[h.lower() for h in have]}; give another --study_name or the same --objective")
    if stored is None:
        study.set_user_attr("objectives", list(ns.objective))
    return study


def make_pruner(ns: argparse.Namespace, base: Config) -> optuna.pruners.BasePruner:
    """MedianPruner (warm-up: 1 epoch), HyperbandPruner over the epochs, or none."""
    if ns.pruner == "none" or len(ns.objective) > 1:  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if ns.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, base.epochs), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=ns.pruner_startup_trials, n_warmup_steps=1)


# ---- the objective ---------------------------------------------------------------------------------
def release_memory() -> None:
    """Free what the finished trial left behind (host and CUDA memory)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Objective:
    """Train one trial's config on the loaded data and score it on valid (never on test)."""

    def __init__(self, start: Config, space: dict[str, dict[str, Any]], objectives: list[str],
                 directions: list[str], out: Path, data: Any, stats: dict | None) -> None:
        self.start, self.space, self.objectives = start, space, objectives
        self.out, self.data, self.stats = out, data, stats
        self.prune = len(objectives) == 1
        # the trainer reports "higher is better"; flip it for a minimised objective
        self.sign = 1.0 if directions[0] == "maximize" else -1.0
        self.worker = worker_identity()

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Run one trial; prunable from the first seed's per-epoch validation value."""
        trial.set_user_attr("worker", self.worker)
        try:
            params = {name: suggest(trial, name, spec) for name, spec in self.space.items()}
            cfg = trial_config(self.start, params, self.out, trial.number)
            trial.set_user_attr("config", cfg.to_dict())

            def on_epoch(seed_index: int, epoch: int, value: float) -> None:
                """Report the first seed's epochs to the pruner; raise TrialPruned when it says so."""
                if seed_index != 0 or not self.prune:
                    return
                trial.report(self.sign * value, epoch)
                if epoch < cfg.epochs and trial.should_prune():  # the last epoch is trained already
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} (validation {value:.4f})")

            metrics = run_experiment(cfg, on_epoch=on_epoch, splits=("valid",), data=self.data, stats=self.stats)
            results = metrics["valid"]["results"]
            for name in ("f1_robust", "f1_full", "acc2_robust", "mae", "ece"):
                with contextlib.suppress(KeyError):
                    trial.set_user_attr(f"valid_{name}", objective_value(name, results))
            values = [objective_value(o, results) for o in self.objectives]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"objective values {values} are not finite")
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:500])
            raise
        finally:
            release_memory()
        return values[0] if len(values) == 1 else values


# ---- results ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so workers sharing an output folder write the results one at a time."""
    import fcntl

    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_plots(study: optuna.Study, objectives: list[str], out: Path) -> list[str]:
    """History and importance plots: HTML with plotly, PNG through matplotlib otherwise."""
    try:
        import plotly  # noqa: F401

        backend, ext = optuna.visualization, "html"
    except ImportError:
        import matplotlib

        matplotlib.use("Agg")
        backend, ext = optuna.visualization.matplotlib, "png"
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    jobs: list[tuple[str, Callable[[], Any]]] = []
    for i, name in enumerate(objectives):
        target = None if len(objectives) == 1 else (lambda t, i=i: t.values[i])
        suffix = "" if len(objectives) == 1 else f"_{name}"
        jobs.append((f"history{suffix}", lambda target=target, name=name: backend.plot_optimization_history(
            study, target=target, target_name=name)))
        if len(complete) >= 2:
            jobs.append((f"importance{suffix}", lambda target=target, name=name: backend.plot_param_importances(
                study, target=target, target_name=name)))
    if len(objectives) == 1 and any(t.intermediate_values for t in study.trials):
        jobs.append(("intermediate", lambda: backend.plot_intermediate_values(study)))
    if len(objectives) > 1 and complete:
        jobs.append(("pareto_front", lambda: backend.plot_pareto_front(study, target_names=objectives)))
    written = []
    for stem, make in jobs:
        path = plots_dir / f"{stem}.{ext}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            if ext == "html":
                fig.write_html(str(path))
            else:
                import matplotlib.pyplot as plt

                figure = fig.figure if hasattr(fig, "figure") else fig.flat[0].figure
                figure.tight_layout()
                figure.savefig(path, dpi=120)
                plt.close(figure)
            written.append(str(path))
        except Exception as err:  # a plot that cannot be drawn (e.g. one distinct value) is skipped
            log.warning("skipped plot %s: %s", stem, str(err).splitlines()[0] if str(err) else type(err).__name__)
    return written


def write_trials_csv(study: optuna.Study, out: Path) -> None:
    """``study.trials_dataframe()`` without the bulky config and worker columns."""
    df = study.trials_dataframe()
    df = df.drop(columns=[c for c in ("user_attrs_config", "user_attrs_worker", "system_attrs_fixed_params")
                          if c in df.columns])
    df.to_csv(out / "trials.csv", index=False)


def trial_entry(t: FrozenTrial, start: Config, out: Path, base: Config) -> dict[str, Any]:
    """One Pareto-front entry of best.json."""
    cfg = final_config(t, start, str(out / "best_retrain"), base.quiet)
    return {"trial": t.number, "values": list(t.values), "params": t.params, "command": train_command(cfg)}


def evaluate_best(cfg: Config, objectives: list[str], data: Any, stats: dict | None) -> dict:
    """Retrain the best trial's config on train, select on valid, evaluate on test (``cfg.output_dir``).
    A finished identical run there is reused."""
    out = Path(cfg.output_dir)
    done = out / "metrics.json"
    skip = {"output_dir", "overwrite", "resume", "quiet"}
    if done.exists():
        with open(done) as fh:
            old = json.load(fh)
        same = {k: v for k, v in old.get("config", {}).items() if k not in skip} == \
            {k: v for k, v in cfg.to_dict().items() if k not in skip}
        if same and "validation" in old:
            return old
    metrics = run_experiment(dataclasses.replace(cfg, overwrite=True), splits=("valid", "test"), data=data,
                             stats=stats)["test"]
    with open(done) as fh:
        return json.load(fh) | {"table": metrics.get("table")}


def write_results(study: optuna.Study, ns: argparse.Namespace, base: Config, start: Config, out: Path,
                  data: Any, stats: dict | None) -> dict:
    """trials.csv, plots and best.json (with the best trial retrained and evaluated on test)."""
    write_trials_csv(study, out)
    plots = write_plots(study, ns.objective, out)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuneError(f"no trial of study {ns.study_name!r} has completed ({states['fail']} failed, "
                        f"{states['pruned']} pruned); see {out / 'trials.csv'}")
    if len(ns.objective) == 1:
        best = study.best_trial
        front: list[FrozenTrial] = []
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        first = 1.0 if ns.directions[0] == "maximize" else -1.0
        best = max(front, key=lambda t: (first * t.values[0], -t.number))
    cfg = final_config(best, start, str(out / "best_retrain"), base.quiet)
    report: dict[str, Any] = {
        "value": best.values[0], "params": best.params, "command": train_command(cfg),
        "trial": best.number, "objectives": list(ns.objective), "directions": list(ns.directions),
        "values": list(best.values), "study_name": ns.study_name, "storage": mask_url(ns.storage),
        "trials": states, "validation": {k[len("valid_"):]: v for k, v in best.user_attrs.items()
                                         if k.startswith("valid_")},
        "config": cfg.to_dict(), "trials_csv": str(out / "trials.csv"), "plots": plots,
    }
    if front:
        report["pareto_front"] = [trial_entry(t, start, out, base) for t in front]
    if not ns.skip_final_eval:
        best_cfg = dataclasses.replace(cfg, output_dir=str(out / "best"), quiet=True)
        metrics = evaluate_best(best_cfg, ns.objective, data, stats)
        report["test"] = {o: objective_value(o, metrics["results"]) for o in ns.objective}
        report["test"]["missing_rate"] = metrics["results"]["missing_rate"]
        report["validation_rerun"] = {o: objective_value(o, metrics["validation"]) for o in ns.objective}
        report["metrics"] = str(out / "best" / "metrics.json")
        report["table"] = metrics.get("table")
    table = report.pop("table", None)
    tmp = out / "best.json.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp, out / "best.json")
    report["table"] = table
    return report


# ---- main ------------------------------------------------------------------------------------------
class _OneLine(logging.Filter):
    """Optuna logs a failed trial with its traceback; keep the one-line reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of the record (unless debugging); always let it through."""
        if not os.environ.get("ATTENTION_ROBUST_DEBUG"):
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(quiet: bool) -> None:
    """INFO logs (trial results) unless --quiet; failed trials in one line (ATTENTION_ROBUST_DEBUG=1:
    with the traceback)."""
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    log.setLevel(level)
    optuna.logging.set_verbosity(level)
    # a logger's own filter sees every record it creates, whichever handler (progress bar) prints it
    logging.getLogger("optuna.study._optimize").addFilter(_OneLine())
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*TensorFloat32.*")
    warnings.filterwarnings("ignore", message=".*Converting a tensor with requires_grad=True.*")


def run(ns: argparse.Namespace, base: Config, fixed: set[str]) -> dict:
    """Create or resume the study, run this process's trials, write the results."""
    out = Path(base.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ns.storage = ns.storage or f"sqlite:///{out / 'study.db'}"
    space = build_space(ns, base, fixed)
    if not space:
        raise TuneError("the search space is empty: every parameter is fixed on the command line")
    start = search_base(base, fixed, ns.objective)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    storage = open_storage(ns.storage, ns.heartbeat_interval, ns.grace_period)
    study = create_or_load_study(ns, storage, make_pruner(ns, base))
    data, stats = load_and_standardize(start)  # once: every trial trains on the same data
    orphans = fail_orphaned_trials(study)
    if orphans:
        log.warning("failed trials %s whose process died; they are retried", orphans)
    n_before = len(study.trials)
    n_trials = 20 if ns.n_trials is None and ns.timeout is None else ns.n_trials
    log.info("study %r in %s: %d trials so far; searching %s", ns.study_name, mask_url(ns.storage), n_before,
             ", ".join(space))
    objective = Objective(start, space, ns.objective, ns.directions, out, data, stats)
    if n_trials != 0:
        study.optimize(objective, n_trials=n_trials, timeout=ns.timeout, catch=(Exception,),
                       gc_after_trial=True, show_progress_bar=not base.quiet)
    with file_lock(out / ".results.lock"):
        return write_results(study, ns, base, start, out, data, stats)


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status."""
    ns, base, fixed = parse_args(argv)  # argparse prints usage + error and exits 2 itself
    setup_logging(base.quiet)
    from training.cli import run_reporting_errors

    report, status = run_reporting_errors(lambda: run(ns, base, fixed),
                                          "interrupted; rerun the same command to resume the study", (TuneError,))
    if status:
        return status
    out = Path(base.output_dir)
    t = report["trials"]
    print(f"study {ns.study_name}: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed, "
          f"{t['running']} running")
    print(f"best trial {report['trial']}: {', '.join(ns.objective)} = "
          f"{', '.join(f'{v:.4f}' for v in report['values'])} (valid)")
    if "test" in report:
        print("test: " + ", ".join(f"{o} = {report['test'][o]:.4f}" for o in ns.objective))
    if report.get("table") and not base.quiet:
        print(f"best trial retrained on train, selected on valid, evaluated on test:\n{report['table']}")
    print(f"params: {json.dumps(report['params'])}")
    print(f"command: {report['command']}")
    print(f"wrote {out}/best.json, trials.csv, plots/" + ("" if ns.skip_final_eval else " and best/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
