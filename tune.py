"""``python tune.py [flags]``: Optuna hyperparameter search over the one training ``Config``.

Every training flag of ``attention_robust_v4.py`` is accepted; a flag given on the command line is
fixed for all trials and leaves the search space. A trial is ``dataclasses.replace(base, **params)``:
it trains on train, selects its epoch on valid and is scored on valid, uncalibrated (the calibration
is fitted on valid). The test split is touched once, when the best trial is retrained into
``OUTPUT_DIR/best/``.

The study lives in an Optuna RDB storage (``OUTPUT_DIR/study.db`` by default, or any ``--storage``
URL such as PostgreSQL): a rerun with the same ``--study_name`` adds trials and several processes
can share one study. Running trials send heartbeats; a trial whose heartbeat is older than
``--grace_period`` is failed by the next trial start of any worker and retried once (Optuna's
``fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback``).

Outputs: ``best.json`` (value, params, a ready ``bash train_v4.sh ...`` command, the test results of
the retrained best trial), ``trials.csv``, ``plots/`` and ``trials/trial_<n>/`` (one run per trial).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from datasets import rate_key
from report.run_report import data_block
from training.atomic import write_json
from training.cli import threads_ok
from training.config import (
    FEATURE_PARAMS,
    NOT_SEARCHABLE,
    RUN_FIELDS,
    Config,
    add_config_arguments,
    config_to_argv,
    load_config_file,
    read_yaml_or_json,
)
from training.errors import writing
from training.metrics import METRIC_NAMES
from training.objectives import LOWER_IS_BETTER, NOT_OBJECTIVES, OBJECTIVES, ROBUST_RATES
from training.run import check_startable, load_and_standardize, run_experiment

log = logging.getLogger("tune")

SCORE_NAMES = [m for m in METRIC_NAMES if m not in NOT_OBJECTIVES]  # the metrics METRIC@P accepts
OBJECTIVE_HELP = (f"what a trial maximises or minimises, on valid: {', '.join(OBJECTIVES)} "
                  f"(*_full: p = 0; the others: mean over missing rates {', '.join(map(str, ROBUST_RATES))}) "
                  f"or METRIC@P for one rate (METRIC in {', '.join(SCORE_NAMES)}); "
                  "several names make a multi-objective study")
# NOT_SEARCHABLE, FEATURE_PARAMS and RUN_FIELDS come from the Config fields' metadata (training/config.py).

HIDDEN_DIM_CHOICES = (32, 64, 128, 256)
# The default search space: the model and loss flags, log scale for rates, weights and temperatures.
DEFAULT_SPACE: dict[str, BaseDistribution] = {
    "hidden_dim": CategoricalDistribution(HIDDEN_DIM_CHOICES),
    "dropout": FloatDistribution(0.0, 0.5),
    "lr": FloatDistribution(1e-4, 3e-3, log=True),
    "encoder": CategoricalDistribution(("mlp", "lstm", "cfc")),
    "fusion_temperature": FloatDistribution(0.3, 3.0, log=True),
    "gate_alpha": FloatDistribution(0.0, 1.0),
    "contrastive_weight": FloatDistribution(1e-3, 1.0, log=True),
    "contrastive_temperature": FloatDistribution(0.03, 0.5, log=True),
    "focal_gamma": FloatDistribution(0.0, 3.0),
    "label_smoothing": FloatDistribution(0.0, 0.2),
    "aecf_mask_prob": FloatDistribution(0.0, 0.4),
    "aecf_entropy_target": FloatDistribution(0.3, 0.95),
    "entropy_weight": FloatDistribution(1e-4, 0.1, log=True),
    "vae_weight": FloatDistribution(1e-3, 1.0, log=True),
    "kl_weight": FloatDistribution(1e-5, 1e-2, log=True),
    "unimodal_weight": FloatDistribution(0.0, 2.0),
    "train_missing_rate": FloatDistribution(0.0, 0.8),
}
DISTRIBUTIONS = {"categorical": CategoricalDistribution, "int": IntDistribution, "float": FloatDistribution}
# the fail_reason a running trial carries until it ends: if its process dies, its heartbeat stops,
# another worker fails the trial, and this is the reason the failed trial keeps
DIED = "its process died"
_UNSET = object()  # marks a config flag that was not given on the command line


class TuneError(Exception):
    """Bad input or an unusable study, reported as one line on stderr."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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
                   help=f"one per objective, each its own (maximize; minimize for "
                        f"{', '.join(sorted(LOWER_IS_BETTER))}); the opposite is refused")
    g.add_argument("--sampler_seed", type=int, default=None,
                   help="seed of the TPE sampler, combined with the number of trials already in the study "
                        "(default: random; give each worker of a shared study its own)")
    g.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stop bad trials early from the first seed's per-epoch validation value")
    g.add_argument("--pruner_startup_trials", type=int, default=3,
                   help="median pruner: trials that finish before any pruning")
    g.add_argument("--heartbeat_interval", type=int, default=10,
                   help="seconds between a running trial's heartbeats in the storage (0 disables)")
    g.add_argument("--grace_period", type=int, default=None,
                   help="a running trial without a heartbeat for this many seconds is failed and retried "
                        "once (default 2 x heartbeat interval)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads of this process (0: torch's default); with K workers on one "
                        "machine give each about cores / K")
    g.add_argument("--skip_final_eval", action="store_true",
                   help="do not retrain the best trial and evaluate it on test (extra workers)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file of training {field: value}, fixed for every trial like the flags; "
                             "flags given beside it win")
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
    if ns.config is not None:
        try:
            given = load_config_file(ns.config) | given
        except ValueError as err:
            parser.error(str(err))
    checks = [(ns.n_trials is None or ns.n_trials >= 0, "--n_trials must be >= 0"),
              (ns.timeout is None or ns.timeout > 0, "--timeout must be > 0"),
              threads_ok(ns.threads),
              (ns.sampler_seed is None or ns.sampler_seed >= 0, "--sampler_seed must be >= 0"),
              (ns.pruner_startup_trials >= 0, "--pruner_startup_trials must be >= 0"),
              (ns.heartbeat_interval >= 0 and (ns.grace_period is None or ns.grace_period > 0),
               "--heartbeat_interval must be >= 0 and --grace_period > 0"),
              (not ns.heartbeat_interval or ns.grace_period is None or ns.grace_period > ns.heartbeat_interval,
               f"--grace_period ({ns.grace_period} s) must be longer than --heartbeat_interval "
               f"({ns.heartbeat_interval} s): a running trial would be failed between two of its heartbeats"),
              (len(set(ns.objective)) == len(ns.objective), "--objective names an objective twice"),
              (ns.directions is None or len(ns.directions) == len(ns.objective),
               f"--directions needs one direction per objective ({len(ns.objective)}), "
               f"got {len(ns.directions or [])}")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    try:
        natural = [objective_spec(o)[2] for o in ns.objective]
        base = Config(**given)
        if "hidden_dim" not in given and base.num_heads > 0 and base.hidden_dim % base.num_heads:
            base.hidden_dim = base.num_heads * max(1, round(base.hidden_dim / base.num_heads))
        base.validate()
        check_startable(base)  # a typo in --model or a missing card would fail every trial of the study
    except (TuneError, ValueError) as err:
        parser.error(str(err))
    for objective, direction, better in zip(ns.objective, ns.directions or natural, natural):
        if direction != better:  # was: searched for the worst runs, and best.json named the worst trial
            parser.error(f"--directions: {objective} is {'lower' if better == 'minimize' else 'higher'} when runs "
                         f"are better, so {direction} would search for the worst; give {better} or leave "
                         f"--directions out")
    ns.directions = ns.directions or natural
    if ns.study_name is None:
        ns.study_name = f"{base.model}_{Path(base.data_path).stem if base.data_path else base.dataset}"
    if "output_dir" not in given:
        base.output_dir = str(Path("runs") / f"tune_{ns.study_name}")
    return ns, base, set(given)


# ---- objectives: the table training.objectives.OBJECTIVES, or METRIC@P -------------------------------
def objective_spec(name: str) -> tuple[str, tuple[float, ...], str]:
    """(metric, rates, natural direction) of an objective name, e.g. ``f1_robust`` or ``mae@0.5``."""
    if name in OBJECTIVES:
        metric, rates = OBJECTIVES[name]
    else:
        metric, _, p = name.partition("@")
        try:
            rates = (float(p),)
        except ValueError:
            rates = (-1.0,)
        if metric not in SCORE_NAMES or not 0.0 <= rates[0] < 1.0:
            raise TuneError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)} or METRIC@P with "
                            f"METRIC in {', '.join(SCORE_NAMES)} and 0 <= P < 1")
    return metric, rates, "minimize" if metric in LOWER_IS_BETTER else "maximize"


def objective_value(name: str, results: dict) -> float:
    """The objective ``name`` of a ``results`` block (``metrics["results"]`` of a split)."""
    metric, rates, _ = objective_spec(name)
    per_rate = results["missing_rate"]
    missing = [rate_key(p) for p in rates if rate_key(p) not in per_rate]
    if missing:
        raise KeyError(f"results lack missing rates {', '.join(missing)} needed by objective {name}")
    return float(sum(per_rate[rate_key(p)][metric] for p in rates) / len(rates))


# ---- search space: Optuna distributions --------------------------------------------------------------
def searchable_fields() -> list[str]:
    """The Config fields a search space may name."""
    return [f.name for f in dataclasses.fields(Config) if f.name not in NOT_SEARCHABLE]


def to_distribution(name: str, spec: Any, source: str) -> BaseDistribution:
    """One search space entry (a list of choices or ``{type, low, high, log, step, choices}``) as an
    Optuna distribution: Optuna's constructor checks the entry, the field's type its values."""
    if name not in searchable_fields():
        raise TuneError(f"{source}: " + (f"{name} describes the data or the run and cannot be searched"
                                         if name in NOT_SEARCHABLE else f"unknown parameter {name!r}")
                        + f"; valid Config fields: {', '.join(searchable_fields())}")
    spec = {"choices": spec} if isinstance(spec, list) else spec
    if not isinstance(spec, dict):
        raise TuneError(f"{source}: {name} must be a mapping {{type, low, high, log, step, choices}} or a list")
    spec, ftype = dict(spec), type(getattr(Config(), name))
    kind = spec.pop("type", "categorical" if "choices" in spec else "int" if ftype is int else "float")
    if kind not in DISTRIBUTIONS:
        raise TuneError(f"{source}: {name} has type {kind!r}; use float, int or categorical")
    if kind != "categorical" and (ftype not in (int, float) or (kind, ftype) == ("float", int)):
        raise TuneError(f"{source}: {name} is a {ftype.__name__} field; "
                        f"use type {'int' if ftype is int else 'categorical'}")
    if kind == "int":  # optuna would truncate 8.5 to 8 without a word
        bad = next((f"{k} {spec[k]!r}" for k in ("low", "high", "step") if k in spec
                    and not (isinstance(spec[k], int) or isinstance(spec[k], float) and spec[k].is_integer())), None)
        if bad is not None:
            raise TuneError(f"{source}: {name} (int): {bad} is not a whole number")
    try:
        dist = DISTRIBUTIONS[kind](**spec)
    except (TypeError, ValueError) as err:
        raise TuneError(f"{source}: {name} ({kind}): {first_line(err)}") from None
    wrong = [v for v in bounds(dist) if type(v) is not ftype and (ftype, type(v)) != (float, int)]
    if wrong:
        raise TuneError(f"{source}: {name} choice {wrong[0]!r} is not a valid {ftype.__name__}")
    return dist


def bounds(dist: BaseDistribution) -> tuple:
    """The choices of a categorical distribution, else ``(low, high)``."""
    return dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)


def load_search_space(path: str, base: Config) -> dict[str, BaseDistribution]:
    """A YAML or JSON search space file as Optuna distributions; TuneError on any problem."""
    try:
        raw = read_yaml_or_json(path, "search space file")
    except ValueError as err:
        raise TuneError(str(err)) from None
    if not isinstance(raw, dict) or not raw:
        raise TuneError(f"search space file {path} must hold a non-empty mapping {{name: {{type, low, high, ...}}}}")
    space = {str(k): to_distribution(str(k), v, path) for k, v in raw.items()}
    for name, dist in space.items():  # each bound and choice, so an impossible range fails now, not per trial
        for v in bounds(dist):
            try:
                dataclasses.replace(base, **{name: v}).validate()
            except ValueError as err:  # a message naming another searched parameter may still be met
                if not any(other != name and other in str(err) for other in space):
                    raise TuneError(f"{path}: {name}={v!r} is out of range: {err}") from None
    return space


def build_space(ns: argparse.Namespace, base: Config, fixed: set[str]) -> dict[str, BaseDistribution]:
    """The --search_space file, or the default space without the parameters of switched-off features
    (hidden_dim kept to multiples of num_heads); flags fixed on the command line leave it."""
    if ns.search_space is not None:
        space = load_search_space(ns.search_space, base)
        if set(space) & fixed:
            log.info("fixed on the command line, left out of the search space: %s",
                     ", ".join(sorted(set(space) & fixed)))
    else:
        off = {p for switch, params in FEATURE_PARAMS.items() if not getattr(base, switch) for p in params}
        space = {k: v for k, v in DEFAULT_SPACE.items() if k not in off}
        space["hidden_dim"] = CategoricalDistribution([h for h in HIDDEN_DIM_CHOICES if h % base.num_heads == 0]
                                                      or [base.num_heads * k for k in (8, 16, 32, 64)])
    return {k: v for k, v in space.items() if k not in fixed}


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Draw parameter ``name`` of distribution ``dist`` from the trial."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    draw = trial.suggest_int if isinstance(dist, IntDistribution) else trial.suggest_float
    return draw(name, dist.low, dist.high, step=dist.step, log=dist.log)


# ---- trial configs -----------------------------------------------------------------------------------
def search_base(base: Config, fixed: set[str], objectives: list[str]) -> Config:
    """The config every trial starts from: the objective's missing rates are evaluated, and the
    epoch selection follows the (first) objective unless --select_metric was given."""
    rates = {p for o in objectives for p in objective_spec(o)[1]}
    cfg = dataclasses.replace(base, eval_missing_rates=sorted(set(base.eval_missing_rates) | rates))
    if "select_metric" not in fixed and objectives[0] in OBJECTIVES:
        cfg.select_metric = objectives[0]
    cfg.validate()
    return cfg


def trial_config(start: Config, params: dict[str, Any], out: Path, number: int) -> Config:
    """The trial's config: the search base with the params, training quietly into trials/trial_<n>/."""
    cfg = dataclasses.replace(start, **params, output_dir=str(out / "trials" / f"trial_{number}"), quiet=True,
                              overwrite=True, resume=False, eval_frame_missing_rates=[0.0])
    cfg.validate()
    return cfg


def final_config(trial: FrozenTrial, start: Config, output_dir: str, quiet: bool) -> Config:
    """The full config of a finished trial for a normal run (the run fields from the command line, and
    where this process finds the data: the study's data is checked to be the same, but another worker
    may have mounted it elsewhere; and the device of this process: a study searched on cuda:1 is
    reported on the CPU with --device cpu)."""
    try:
        cfg = Config.from_dict(trial.user_attrs["config"])
    except (KeyError, TypeError, ValueError):  # stored by an older Config, or not at all
        cfg = dataclasses.replace(start, **trial.params)
    return dataclasses.replace(cfg, output_dir=output_dir, quiet=quiet, overwrite=False, resume=False,
                               data_path=start.data_path, feature_cache=start.feature_cache, device=start.device,
                               eval_frame_missing_rates=list(start.eval_frame_missing_rates))


def train_command(cfg: Config) -> str:
    """``bash train_v4.sh FLAGS`` rebuilding ``cfg`` (paths absolute: the script changes directory)."""
    cfg = dataclasses.replace(cfg, output_dir=os.path.abspath(cfg.output_dir), quiet=False,
                              data_path=os.path.abspath(cfg.data_path) if cfg.data_path else None)
    argv = config_to_argv(cfg)
    if "--epochs" not in argv:  # at the default: train_v4.sh would train its own 6 on the embedded data
        argv += ["--epochs", str(cfg.epochs)]
    if "--output_dir" not in argv:
        argv += ["--output_dir", cfg.output_dir]
    return "bash train_v4.sh " + shlex.join(argv)


# ---- storage and study ----------------------------------------------------------------------------
def mask_url(url: str) -> str:
    """The storage URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat_interval: int, grace_period: int | None) -> optuna.storages.RDBStorage:
    """An RDBStorage (SQLite too) with heartbeats: a trial whose process died is failed, then retried once."""
    sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # a host that drops packets: an error in 30 s, not a hang of minutes
        engine_kwargs["connect_args"] = {"connect_timeout": 30}
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval:
        heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                     "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    for attempt in range(8):  # concurrent first starts may race on creating the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception as err:
            if isinstance(err, ImportError):  # optuna's message does not say which driver
                scheme = url.split("://")[0]
                raise TuneError(f"cannot open --storage {mask_url(url)}: the database driver for {scheme!r} is not "
                                "installed; for PostgreSQL write postgresql+psycopg2:// (requirements.txt installs "
                                "psycopg2-binary), or install the driver the URL names") from None
            if not re.search("locked|already exists|duplicate|unique", str(err).lower()) or attempt == 7:
                raise TuneError(f"cannot open --storage {mask_url(url)}: {first_line(err)}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def study_names(ns: argparse.Namespace) -> list[str]:
    """The studies ``--storage`` holds, without creating anything: a SQLite file that is not there holds
    none."""
    if ns.storage.startswith("sqlite:///") and not Path(ns.storage.removeprefix("sqlite:///").split("?")[0]).is_file():
        return []
    return optuna.study.get_all_study_names(open_storage(ns.storage, ns.heartbeat_interval, ns.grace_period))


def data_identity(cfg: Config, data: Any) -> dict:
    """What a study searches on, the same for workers that mount the data at different paths: the data
    set's name, the data file's base name (or the synthetic seed), the split sizes and per split a
    digest of its sample ids and labels (``report.run_report.data_block``'s)."""
    digests = {name: [data_block(data, name)[k] for k in ("ids_sha256", "labels_sha256")]
               for name in data.splits}
    return {"dataset": data.name,
            "file": os.path.basename(os.path.normpath(cfg.data_path)) if cfg.data_path else None,
            "synthetic_seed": None if cfg.data_path else cfg.synthetic_seed,
            "sizes": {name: split.n for name, split in data.splits.items()}, "digests": digests}


# per worker, and no bearing on what a trial measures: where the data and the card are, and how fast it runs
WORKER_FIELDS = {*RUN_FIELDS, "data_path", "feature_cache", "device", "compile", "stack_lstm", "eval_only",
                 "checkpoint", "eval_frame_missing_rates"}


def search_settings(start: Config, space: dict[str, BaseDistribution]) -> dict:
    """What every trial of a study must share: the search space and the fixed config it starts from
    (without ``WORKER_FIELDS``)."""
    return {"space": {k: optuna.distributions.distribution_to_json(v) for k, v in sorted(space.items())},
            "fixed": {k: v for k, v in start.to_dict().items() if k not in space and k not in WORKER_FIELDS}}


def settings_difference(stored: Any, now: dict) -> str:
    """The fields in which two ``search_settings`` differ, e.g. ``epochs 1 (now 2), the search space (lr)``."""
    if not isinstance(stored, dict):
        return "unknown settings"
    fixed, old = now["fixed"], stored.get("fixed") if isinstance(stored.get("fixed"), dict) else {}
    diffs = [f"{k} {old.get(k)!r} (now {fixed.get(k)!r})" for k in sorted(set(old) | set(fixed))
             if old.get(k) != fixed.get(k)]
    space, was = now["space"], stored.get("space") if isinstance(stored.get("space"), dict) else {}
    changed = sorted(k for k in set(space) | set(was) if space.get(k) != was.get(k))
    if changed:
        diffs.append(f"the search space ({', '.join(changed)})")
    return ", ".join(diffs)


def describe_data(identity: Any) -> str:
    """A ``data_identity`` for a message, e.g. ``tiny.pkl (96/48/64 train/valid/test samples)``."""
    if not isinstance(identity, dict):
        return repr(identity)
    what = (identity.get("file") if identity.get("file")
            else f"the embedded {identity.get('dataset')} data (--synthetic_seed {identity.get('synthetic_seed')})")
    if identity.get("file") and identity.get("dataset") != Path(str(identity["file"])).stem:
        what += f" as --dataset {identity.get('dataset')}"
    sizes = identity.get("sizes")
    if isinstance(sizes, dict) and sizes:
        what += f" ({'/'.join(map(str, sizes.values()))} {'/'.join(map(str, sizes))} samples)"
    return what


CLAIM_SECONDS = 120.0  # a claim not made a record by then is a dead worker's, and no longer counts


def record_once(study: optuna.Study, key: str, value: Any, mismatch: Callable[[Any, bool], str]) -> None:
    """Record ``value`` as the study's ``key`` user attribute for good, or raise ``TuneError(mismatch(other,
    claimed))`` when the study holds another (``claimed``: another worker is recording it at this moment).

    Safe when workers start a new study together, where a plain read-then-write lets the last write
    win: each worker first writes a claim of its own (``key:<random>``, with the time), reads every
    claim back, and records ``value`` only if no other value is claimed or recorded; otherwise it
    withdraws its claim and stops. Of two workers with different values the later reader sees the
    other's claim, so at most one value is ever recorded. A claim lapses after CLAIM_SECONDS (a worker
    that died while starting), so a worker gives up its own once half of that has passed, and the
    workers' clocks must agree within the other half. A study made before ``key`` was recorded takes
    this run's value."""
    def current() -> tuple[Any, Any]:  # (the record, another value claimed in the last CLAIM_SECONDS)
        attrs, now = study.user_attrs, time.time()  # read from the storage each time
        claims = [c["value"] for k, c in attrs.items() if k.startswith(f"{key}:") and isinstance(c, dict)
                  and now - c.get("at", 0.0) < CLAIM_SECONDS]
        return attrs.get(key), next((c for c in claims if c != value), None)

    def check(stored: Any, claimed: Any) -> None:
        if stored is not None and stored != value:
            raise TuneError(mismatch(stored, False))
        if stored is None and claimed is not None:
            raise TuneError(mismatch(claimed, True))

    stored, claimed = current()
    check(stored, claimed)
    if stored is not None:
        return
    mine, since = f"{key}:{uuid.uuid4().hex}", time.time()
    study.set_user_attr(mine, {"value": value, "at": since})
    try:
        check(*current())
        if time.time() - since > CLAIM_SECONDS / 2:  # others may soon take the claim for a dead worker's
            raise TuneError(f"starting study {study.study_name!r} took over {CLAIM_SECONDS / 2:.0f} s (a slow "
                            "storage?); rerun the same command")
    except TuneError:
        study.set_user_attr(mine, None)  # withdrawn: the study is left to the other worker's value
        raise
    study.set_user_attr(key, value)
    study.set_user_attr(mine, None)  # recorded first: a worker reading now sees the record


def claim_note(claimed: bool) -> str:
    """The end of a ``record_once`` message about another worker's claim."""
    return f" (if that worker died, its claim lapses {CLAIM_SECONDS:.0f} s after it was made)" if claimed else ""


def create_or_load_study(ns: argparse.Namespace, storage: optuna.storages.RDBStorage,
                         pruner: optuna.pruners.BasePruner, data: dict, settings: dict | None = None) -> optuna.Study:
    """Create the study or resume it (its objectives, directions and data, a ``data_identity``, must
    match, and with ``settings`` (``search_settings``; a run that adds trials) its search space and
    fixed config; a study made before one was recorded takes this run's); the sampler's seed
    combines --sampler_seed with the trials so far, so a rerun does not repeat earlier proposals."""
    try:
        study = optuna.create_study(storage=storage, study_name=ns.study_name, pruner=pruner,
                                    directions=ns.directions, load_if_exists=True)
    except Exception as err:
        raise TuneError(f"cannot create or load study {ns.study_name!r} in {mask_url(storage.url)}: "
                        f"{first_line(err)}") from None
    have = [d.name.lower() for d in study.directions]

    def study_is(claimed: bool, recorded: str) -> str:  # "study 's' was run", or another worker's claim
        return f"study {ns.study_name!r} {'is being started by another worker' if claimed else recorded}"

    def other_objectives(objectives: Any, claimed: bool = False) -> str:
        return (f"{study_is(claimed, 'already exists')} with objectives {objectives} and directions {have}; "
                f"give another --study_name or the same --objective{claim_note(claimed)}")

    def other_data(other: Any, claimed: bool) -> str:
        same_look = " (the same name and sizes, other samples or labels)" if \
            describe_data(other) == describe_data(data) else ""
        return (f"{study_is(claimed, 'was run')} on {describe_data(other)}, not on {describe_data(data)}{same_look}; "
                f"give another --study_name or the same --data_path/--dataset{claim_note(claimed)}")

    def other_settings(other: Any, claimed: bool) -> str:
        return (f"{study_is(claimed, 'was run')} with other settings: {settings_difference(other, settings)}; "
                f"give another --study_name, or the same flags and --search_space{claim_note(claimed)}")

    if have != ns.directions:
        if study.user_attrs.get("objectives") == list(ns.objective):  # made when --directions could oppose them
            raise TuneError(f"study {ns.study_name!r} searched {ns.objective} in directions {have}, against "
                            f"what they measure (its best trials are the worst runs); give another --study_name")
        raise TuneError(other_objectives(study.user_attrs.get("objectives")))
    record_once(study, "objectives", list(ns.objective), other_objectives)
    stored = study.user_attrs.get("data")
    if isinstance(stored, dict) and "digests" not in stored:  # recorded before the digests: compared without
        data = {k: v for k, v in data.items() if k != "digests"}
    record_once(study, "data", data, other_data)
    if settings is not None:
        record_once(study, "settings", settings, other_settings)
    seed = ns.sampler_seed
    if seed is not None:
        seed = int(np.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def make_pruner(ns: argparse.Namespace, epochs: int) -> optuna.pruners.BasePruner:
    """MedianPruner (warm-up: 1 epoch), HyperbandPruner over the epochs, or none."""
    if ns.pruner == "none" or len(ns.objective) > 1:  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if ns.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=ns.pruner_startup_trials, n_warmup_steps=1)


# ---- the objective ---------------------------------------------------------------------------------
class Objective:
    """Train one trial's config on the loaded data and score it on valid (never on test)."""

    def __init__(self, start: Config, space: dict[str, BaseDistribution], objectives: list[str],
                 directions: list[str], out: Path, data: Any, stats: dict | None) -> None:
        self.start, self.space, self.objectives = start, space, objectives
        self.out, self.data, self.stats = out, data, stats
        self.prune = len(objectives) == 1
        # the trainer reports "higher is better"; flip it for a minimised objective
        self.sign = 1.0 if directions[0] == "maximize" else -1.0

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Run one trial; prunable from the first seed's per-epoch validation value."""
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("fail_reason", DIED)
        reason = None
        try:
            params = {name: suggest(trial, name, dist) for name, dist in self.space.items()}
            cfg = trial_config(self.start, params, self.out, trial.number)
            trial.set_user_attr("config", cfg.to_dict())

            def on_epoch(seed_index: int, epoch: int, value: float) -> None:
                """Report the first seed's epochs to the pruner; raise TrialPruned when it says so."""
                if seed_index != 0 or not self.prune:
                    return
                trial.report(self.sign * value, epoch)
                if epoch < cfg.epochs and trial.should_prune():  # the last epoch is trained already
                    raise optuna.TrialPruned(f"pruned after epoch {epoch} (validation {value:.4f})")

            results = run_experiment(cfg, on_epoch=on_epoch, splits=("valid",), data=self.data,
                                     stats=self.stats)["valid"]["results"]
            for name in OBJECTIVES:
                with contextlib.suppress(KeyError):  # a rate the sweep did not evaluate
                    trial.set_user_attr(f"valid_{name}", objective_value(name, results))
            values = [objective_value(o, results) for o in self.objectives]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"objective values {values} are not finite")
        except optuna.TrialPruned:
            raise
        except BaseException as err:  # KeyboardInterrupt too: Optuna fails the trial and re-raises
            reason = f"{type(err).__name__}: {err}"[:500]
            raise
        finally:
            trial.set_user_attr("fail_reason", reason)  # None: the trial did not fail
            if self.start.compile != "none" or "compile" in self.space:
                # the trial's compiled graphs (and CUDA graphs) go with its model; kept, every trial of
                # another shape would add graphs, and from the ninth on torch would fall back to
                # running the forward uncompiled (its recompile limit)
                torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return values[0] if len(values) == 1 else values


# ---- results ---------------------------------------------------------------------------------------
def write_plots(study: optuna.Study, objectives: list[str], out: Path) -> list[str]:
    """History, importance, intermediate values and Pareto front: HTML with plotly, PNG otherwise."""
    try:
        import plotly  # noqa: F401

        vis, ext = optuna.visualization, "html"
    except ImportError:
        vis, ext = optuna.visualization.matplotlib, "png"
    with writing(out / "plots"):
        (out / "plots").mkdir(exist_ok=True)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    jobs: dict[str, Any] = {}
    for i, name in enumerate(objectives):
        one = len(objectives) == 1
        kw = {"target": None if one else (lambda t, i=i: t.values[i]), "target_name": name}
        suffix = "" if one else f"_{name}"
        jobs[f"history{suffix}"] = lambda kw=kw: vis.plot_optimization_history(study, **kw)
        if n_complete >= 2:
            jobs[f"importance{suffix}"] = lambda kw=kw: vis.plot_param_importances(study, **kw)
    if len(objectives) == 1 and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        jobs["intermediate"] = lambda: vis.plot_intermediate_values(study)
    if len(objectives) > 1 and n_complete:
        jobs["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=objectives)
    written = []
    for stem, make in jobs.items():
        path = out / "plots" / f"{stem}.{ext}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            if ext == "html":
                fig.write_html(str(path))
            else:  # an Axes (or an array of them) on a pyplot figure
                import matplotlib.pyplot as plt

                figure = (fig if hasattr(fig, "figure") else fig.flat[0]).figure
                figure.tight_layout()
                figure.savefig(path, dpi=120)
                plt.close(figure)
            written.append(str(path))
        except Exception as err:  # a plot that cannot be drawn (e.g. one distinct value) is skipped
            log.warning("skipped plot %s: %s", stem, first_line(err))
    return written


def evaluate_best(cfg: Config, data: Any, stats: dict | None) -> dict:
    """Retrain the best trial's config on train, select on valid, evaluate on test (``cfg.output_dir``).
    A finished identical run there, on the same test samples and labels, is reused."""
    done = Path(cfg.output_dir) / "metrics.json"
    run_fields = set(RUN_FIELDS)  # where and how a run writes: never changes a result
    if done.exists():
        try:
            old = json.loads(done.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
            old = f"unreadable ({first_line(err)})"
        if not isinstance(old, dict) or not isinstance(old.get("config", {}), dict):
            reason = old if isinstance(old, str) else "not a metrics mapping"
            raise TuneError(f"{done} is {reason}; move or remove {done.parent} to retrain the best trial there")
        same = {k: v for k, v in old.get("config", {}).items() if k not in run_fields} == \
            {k: v for k, v in cfg.to_dict().items() if k not in run_fields}
        was, now = old.get("data") if isinstance(old.get("data"), dict) else {}, data_block(data)
        same_data = all(was.get(k) in (None, now[k]) for k in ("n", "ids_sha256", "labels_sha256"))
        if same and same_data and "validation" in old:
            return old
    metrics = run_experiment(dataclasses.replace(cfg, overwrite=True), data=data, stats=stats)["test"]
    return json.loads(done.read_text()) | {"table": metrics.get("table")}


def write_results(study: optuna.Study, ns: argparse.Namespace, base: Config, start: Config, out: Path,
                  data: Any, stats: dict | None) -> dict:
    """trials.csv, plots and best.json (with the best trial retrained and evaluated on test)."""
    df = study.trials_dataframe()  # without the bulky config and worker columns
    with writing(out / "trials.csv"):
        df.drop(columns=[c for c in ("user_attrs_config", "user_attrs_worker", "system_attrs_fixed_params")
                         if c in df.columns]).to_csv(out / "trials.csv", index=False)
    plots = write_plots(study, ns.objective, out)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    if not states["complete"]:
        raise TuneError(f"no trial of study {ns.study_name!r} has completed ({states['fail']} failed, "
                        f"{states['pruned']} pruned); see {out / 'trials.csv'}")
    front: list[FrozenTrial] = []
    if len(ns.objective) == 1:
        best = study.best_trial
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        first = 1.0 if ns.directions[0] == "maximize" else -1.0
        best = max(front, key=lambda t: (first * t.values[0], -t.number))

    def command(t: FrozenTrial) -> str:
        return train_command(final_config(t, start, str(out / "best_retrain"), base.quiet))

    cfg = final_config(best, start, str(out / "best_retrain"), base.quiet)
    report: dict[str, Any] = {
        "value": best.values[0], "params": best.params, "command": command(best),
        "trial": best.number, "objectives": list(ns.objective), "directions": list(ns.directions),
        "values": list(best.values), "study_name": ns.study_name, "storage": mask_url(ns.storage),
        "trials": states, "validation": {k[len("valid_"):]: v for k, v in best.user_attrs.items()
                                         if k.startswith("valid_")},
        "config": cfg.to_dict(), "trials_csv": str(out / "trials.csv"), "plots": plots,
    }
    if front:
        report["pareto_front"] = [{"trial": t.number, "values": list(t.values), "params": t.params,
                                   "command": command(t)} for t in front]
    table = None
    if not ns.skip_final_eval:
        metrics = evaluate_best(dataclasses.replace(cfg, output_dir=str(out / "best"), quiet=True), data, stats)
        report["test"] = {o: objective_value(o, metrics["results"]) for o in ns.objective}
        report["test"]["missing_rate"] = metrics["results"]["missing_rate"]
        report["validation_rerun"] = {o: objective_value(o, metrics["validation"]) for o in ns.objective}
        report["metrics"] = str(out / "best" / "metrics.json")
        table = metrics.get("table")
    with writing(out / "best.json"):
        write_json(report, out / "best.json")
    return report | {"table": table}


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


def check_output_dir(out: Path, study_name: str) -> None:
    """Keep ``out`` to one study: its trials/, best/ and best.json are numbered and named per study, so a
    second study there would overwrite the first's. The study is named in ``out/.study`` (or, for a
    folder from before it, in its best.json)."""
    owner = None
    try:
        if (out / ".study").exists():
            owner = (out / ".study").read_text().strip()
        elif (out / "best.json").exists():
            owner = json.loads((out / "best.json").read_text()).get("study_name")
    except (OSError, ValueError, AttributeError):  # unreadable: as if unnamed
        owner = None
    if owner and owner != study_name:
        raise TuneError(f"{out} holds the outputs of study {owner!r}; give study {study_name!r} its own --output_dir")


def mark_output_dir(out: Path, study_name: str) -> None:
    """Name the study in ``out/.study``, once it has started (``check_output_dir`` if another worker
    named one in the meantime)."""
    try:
        with open(out / ".study", "x") as fh:
            fh.write(study_name + "\n")
    except FileExistsError:
        check_output_dir(out, study_name)


def run(ns: argparse.Namespace, base: Config, fixed: set[str]) -> dict:
    """Create or resume the study, run this process's trials, write the results."""
    out = Path(base.output_dir).resolve()
    n_trials = 20 if ns.n_trials is None and ns.timeout is None else ns.n_trials
    where, external = (mask_url(ns.storage) if ns.storage else str(out)), ns.storage is not None
    ns.storage = ns.storage or f"sqlite:///{out / 'study.db'}"
    space = build_space(ns, base, fixed)
    if not space:
        raise TuneError("the search space is empty: every parameter is fixed on the command line")
    start = search_base(base, fixed, ns.objective)
    names = study_names(ns) if n_trials == 0 else None  # before the output folder or a database file is made
    if names is not None and ns.study_name not in names:
        shown = ", ".join(map(repr, sorted(names)[:10])) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        held = f" (it holds {shown})" if names else ""
        raise TuneError(f"--n_trials 0 reports on an existing study, and {where} holds no study {ns.study_name!r}"
                        f"{held}; give the --output_dir, or --storage and --study_name, of the study to report on, "
                        f"or --n_trials N to run trials")
    if ns.threads:
        torch.set_num_threads(ns.threads)
    data, stats = load_and_standardize(start)  # once: every trial trains on the same data; the study checks it
    # the output folder is made once the data and a server --storage have opened (a SQLite file may lie
    # inside it), and named for the study once the study has started: a command that fails leaves no
    # folder claiming to hold a study, and removes the folder if it made it and nothing else is there
    server = external and not ns.storage.startswith("sqlite")
    storage = open_storage(ns.storage, ns.heartbeat_interval, ns.grace_period) if server else None
    made = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        check_output_dir(out, ns.study_name)
    try:
        storage = storage or open_storage(ns.storage, ns.heartbeat_interval, ns.grace_period)
        study = create_or_load_study(ns, storage, make_pruner(ns, base.epochs), data_identity(start, data),
                                     search_settings(start, space) if n_trials != 0 else None)  # a report runs none
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # another worker's files, or gone: left as they are
                out.rmdir()
        raise
    with writing(out / ".study"):
        mark_output_dir(out, ns.study_name)
    log.info("study %r in %s: %d trials so far; searching %s", ns.study_name, mask_url(ns.storage),
             len(study.trials), ", ".join(space))
    if n_trials != 0:  # each trial start first fails (and requeues) the trials whose heartbeat stopped
        study.optimize(Objective(start, space, ns.objective, ns.directions, out, data, stats), n_trials=n_trials,
                       timeout=ns.timeout, catch=(Exception,), gc_after_trial=True, show_progress_bar=not base.quiet)
    optuna.storages.fail_stale_trials(study)  # a report-only run (--n_trials 0) sees dead trials too
    with writing(out / ".results.lock"):
        lock = open(out / ".results.lock", "w")  # workers sharing a folder write results one at a time
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
    t = report["trials"]
    print(f"study {ns.study_name}: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed, "
          f"{t['running']} running")
    print(f"best trial {report['trial']}: {', '.join(ns.objective)} = "
          f"{', '.join(f'{v:.4f}' for v in report['values'])} (valid, uncalibrated)")
    if "test" in report:
        print("test: " + ", ".join(f"{o} = {report['test'][o]:.4f}" for o in ns.objective))
    if report["table"] and not base.quiet:
        print(f"best trial retrained on train, selected on valid, evaluated on test:\n{report['table']}")
    print(f"params: {json.dumps(report['params'])}")
    print(f"command: {report['command']}")
    print(f"wrote {base.output_dir}/best.json, trials.csv, plots/" + ("" if ns.skip_final_eval else " and best/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
