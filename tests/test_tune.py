"""Tests of ``tune.py``: flags and search space, pruning, failed trials, resume (also after SIGKILL),
workers sharing one study (SQLite and a real PostgreSQL), and the best.json command reproducing
the best trial's validation value."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import importlib.util
import itertools
import json
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

import tune
from tests.conftest import ROOT
from tests.helpers import tiny_args, tiny_pickle
from training.config import Config
from training.evaluate import Evaluator
from training.run import load_and_standardize
from training.trainer import NonFiniteLossError, load_for_eval

PG_URL = os.environ.get("ATTENTION_ROBUST_PG_URL")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_pickle(tmp_path_factory.mktemp("data") / "tiny.pkl")


# one torch thread per process: two workers on two cores, and no oversubscription on a busy machine
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)


def tune_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *args, "--threads", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def start_tune(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *args, "--threads", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


# ---- flags and search space (no training) ----------------------------------------------------------
def test_explicit_flags_are_fixed_and_leave_the_space():
    ns, base, fixed = tune.parse_args(["--lr", "0.001", "--no_use_contrastive", "--num_heads", "3",
                                       "--n_trials", "4", "--study_name", "s"])
    assert fixed == {"lr", "use_contrastive", "num_heads"}  # --lr 0.001 is the default, still fixed
    assert base.lr == 1e-3 and not base.use_contrastive and base.output_dir == str(Path("runs") / "tune_s")
    space = tune.build_space(ns, base, fixed)
    assert "lr" not in space and "contrastive_weight" not in space and "contrastive_temperature" not in space
    assert all(h % 3 == 0 for h in space["hidden_dim"].choices)
    assert space["kl_weight"].log and space["fusion_temperature"].log and not space["dropout"].log
    assert set(space) <= set(tune.searchable_fields())
    start = tune.search_base(base, fixed, ["mae"])
    assert start.select_metric == "mae" and {0.0, 0.3, 0.5, 0.7} <= set(start.eval_missing_rates)
    cfg = tune.trial_config(start, {"hidden_dim": 48, "dropout": 0.2}, Path("/tmp/o"), 5)
    assert isinstance(cfg, Config) and cfg.hidden_dim == 48 and cfg.eval_frame_missing_rates == [0.0]
    assert cfg.output_dir == "/tmp/o/trials/trial_5" and cfg.quiet


def test_a_config_file_is_fixed_like_flags_and_flags_beside_it_win(tmp_path):
    # was: "unrecognized arguments: --config", though the README says every training flag is accepted
    (tmp_path / "exp.yaml").write_text("lr: 0.002\ndropout: 0.1\n")
    ns, base, fixed = tune.parse_args(["--config", str(tmp_path / "exp.yaml"), "--dropout", "0.2"])
    assert fixed == {"lr", "dropout"} and (base.lr, base.dropout) == (0.002, 0.2)
    assert not {"lr", "dropout"} & set(tune.build_space(ns, base, fixed))
    (tmp_path / "bad.yaml").write_text("lrr: 0.002\n")
    with pytest.raises(SystemExit) as exc:
        tune.parse_args(["--config", str(tmp_path / "bad.yaml")])
    assert exc.value.code == 2


def test_a_grace_period_within_one_heartbeat_is_refused(capsys):
    # was: a worker failed another's healthy trial between two heartbeats, and that worker crashed
    # with optuna's "Cannot tell a FAIL trial"
    with pytest.raises(SystemExit) as exc:
        tune.parse_args(["--heartbeat_interval", "10", "--grace_period", "5"])
    assert exc.value.code == 2 and "--grace_period (5 s) must be longer than --heartbeat_interval (10 s)" in \
        capsys.readouterr().err
    tune.parse_args(["--heartbeat_interval", "0", "--grace_period", "5"])  # no heartbeats: nothing to race


def test_the_best_command_names_the_epochs_and_reports_on_this_device(tmp_path):
    # at the default 30 epochs the flag was left out, and train_v4.sh trains 6 on the embedded data; a
    # study searched on cuda:1 was reported on that card whatever --device the report gave
    cfg = Config(output_dir=str(tmp_path / "best"))
    assert "--epochs 30" in tune.train_command(cfg)
    trial = types.SimpleNamespace(user_attrs={"config": dataclasses.replace(cfg, device="cuda:1").to_dict()},
                                  params={})
    assert tune.final_config(trial, Config(device="cpu"), str(tmp_path / "b"), True).device == "cpu"


def test_objectives_minimise_what_is_lower_is_better_and_refuse_the_ece_band():
    for name in ("mae", "ece", "brier", "nll", "brier@0.3", "nll@0.0", "ece@0.5"):
        assert tune.objective_spec(name)[2] == "minimize", name
    for name in ("f1_robust", "acc2_full", "corr", "acc7@0.7", "f1_non0@0.5"):
        assert tune.objective_spec(name)[2] == "maximize", name
    assert tune.objective_spec("nll") == ("nll", (0.0, 0.3, 0.5, 0.7), "minimize")
    for name in ("ece_twin_hi@0.3", "nll@1.0", "f2"):
        with pytest.raises(tune.TuneError, match=f"unknown objective {name!r}"):
            tune.objective_spec(name)


def test_search_space_file_is_checked(tmp_path):
    ns, base, fixed = tune.parse_args(["--hidden_dim", "16"])
    good = tmp_path / "space.yaml"
    good.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\nencoder: [mlp, lstm]\n"
                    "hidden_dim: [32, 64]\nkl_warmup_epochs: {low: 0, high: 5}\n")
    ns.search_space = str(good)
    space = tune.build_space(ns, base, fixed)
    assert set(space) == {"lr", "encoder", "kl_warmup_epochs"}  # hidden_dim is fixed on the command line
    assert isinstance(space["encoder"], CategoricalDistribution) and isinstance(space["kl_warmup_epochs"],
                                                                                IntDistribution)
    bad = {"unknown.yaml": ("hiden_dim: [16]\n", "valid Config fields: "),
           "range.yaml": ("dropout: {type: float, low: 0.0, high: 1.5}\n", "dropout must lie in [0, 1)"),
           "type.json": ('{"encoder": {"type": "float", "low": 0, "high": 1}}', "use type categorical"),
           "broken.yaml": ("lr: {type: float, low: [\n", "not valid YAML/JSON"),
           "twice.yaml": ("lr: {low: 0.001, high: 0.01}\nencoder: [mlp]\nlr: {low: 0.1, high: 0.2}\n",
                          "key 'lr' appears twice (lines 1 and 3); keep one"),
           "twice.json": ('{"lr": {"low": 0.001, "high": 0.01, "high": 0.1}}', "key 'high' appears twice"),
           "data.yaml": ("data_path: [a, b]\n", "cannot be searched"),
           # checked by Optuna's distribution constructors, reported in one line
           "order.yaml": ("lr: {low: 0.01, high: 0.001}\n", "lr (float): `low <= high` must hold"),
           "log.yaml": ("dropout: {low: 0.0, high: 0.4, log: true}\n", "dropout (float): `low > 0` must hold"),
           "key.yaml": ("lr: {low: 0.001, hihg: 0.01}\n", "lr (float): "),
           "choice.yaml": ("hidden_dim: [32, '64']\n", "hidden_dim choice '64' is not a valid int"),
           "whole.yaml": ("kl_warmup_epochs: {low: 0.5, high: 5}\n",  # was: searched from 0
                          "kl_warmup_epochs (int): low 0.5 is not a whole number")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        ns.search_space = str(tmp_path / name)
        with pytest.raises(tune.TuneError, match=re.escape(message)):
            tune.build_space(ns, base, fixed)
    ns.search_space = str(tmp_path / "missing.yaml")
    with pytest.raises(tune.TuneError, match="cannot read search space file"):
        tune.build_space(ns, base, fixed)


def test_a_storage_url_without_its_driver_names_the_driver_to_use():
    # was: optuna's "Failed to import DB access module ... install appropriate one": psycopg 3 is what
    # SQLAlchemy takes for postgresql://, and requirements.txt installs psycopg2
    pytest.importorskip("psycopg2")
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here: postgresql:// has its driver")
    with pytest.raises(tune.TuneError) as err:
        tune.open_storage("postgresql://u:secret@localhost:1/x", 0, None)
    assert str(err.value) == (
        "cannot open --storage postgresql://u:***@localhost:1/x: the database driver for 'postgresql' is not "
        "installed; for PostgreSQL write postgresql+psycopg2:// (requirements.txt installs psycopg2-binary), or "
        "install the driver the URL names")


@pytest.mark.slow
def test_bad_input_is_one_line_without_traceback(tiny, tmp_path, capsys):
    base = tiny_args(tiny, tmp_path / "out")
    r = tune_cli(*base, "--storage", "nosuchdb://x/y", "--n_trials", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: cannot open --storage nosuchdb://x/y: "
                                             "Can't load plugin: sqlalchemy.dialects:nosuchdb"]
    assert not (tmp_path / "out").exists()  # was: left holding only a .study that claimed it
    (tmp_path / "space.yaml").write_text("not_a_field: [1, 2]\n")
    capsys.readouterr()
    assert tune.main([*base, "--search_space", str(tmp_path / "space.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown parameter 'not_a_field'; valid Config fields: " in err[0]
    assert tune.main([*base, "--search_space", str(tmp_path / "absent.yaml")]) == 1
    assert "cannot read search space file" in capsys.readouterr().err
    for argv, message in ((["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
                          (["--objective", "f1_robust", "ece", "--directions", "maximize"],
                           "one direction per objective"),
                          (["--objective", "f1_robust", "mae", "--directions", "maximize", "maximize"],
                           "--directions: mae is lower when runs are better, so maximize would search for the worst; "
                           "give minimize or leave --directions out"),
                          (["--directions", "minimize"], "f1_robust is higher when runs are better"),
                          (["--objective", "f2"], "unknown objective 'f2'"),
                          (["--n_trials", "-3"], "--n_trials must be >= 0"),
                          (["--timeout", "0"], "--timeout must be > 0"),
                          (["--pruner_startup_trials", "-2"], "--pruner_startup_trials must be >= 0")):
        with pytest.raises(SystemExit) as exc:
            tune.main([*base, *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_report_only_on_a_study_that_is_not_there_is_refused_before_anything_is_written(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert tune.main([*tiny_args(tiny, out), "--n_trials", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --n_trials 0 reports on an existing study, and {out} holds no study "
                   f"'attention_robust_v4_tiny'; give the --output_dir, or --storage and --study_name, of the study "
                   f"to report on, or --n_trials N to run trials"]
    new, other = tmp_path / "new.db", tmp_path / "other.db"
    assert tune.main([*tiny_args(tiny, out), "--n_trials", "0", "--storage", f"sqlite:///{new}"]) == 1
    assert f"sqlite:///{new} holds no study 'attention_robust_v4_tiny'" in capsys.readouterr().err
    optuna.create_study(storage=f"sqlite:///{other}", study_name="other")
    assert tune.main([*tiny_args(tiny, out), "--n_trials", "0", "--storage", f"sqlite:///{other}"]) == 1
    assert "holds no study 'attention_robust_v4_tiny' (it holds 'other'); give" in capsys.readouterr().err
    assert optuna.study.get_all_study_names(f"sqlite:///{other}") == ["other"]
    assert not out.exists() and not new.exists()


@pytest.mark.parametrize("flags, message", [(["--device", "cuda:99"], "--device cuda:99"),  # no CUDA, or too few cards
                                            (["--model", "tfm"], "unknown --model 'tfm'"),
                                            (["--data_path", "tiny.pk"], "--data_path tiny.pk: no such file")])
def test_a_missing_device_or_model_is_refused_before_the_study_holds_a_trial(tiny, tmp_path, capsys, flags, message):
    # these used to fail every trial of the study, one by one
    db = tmp_path / "study.db"
    with pytest.raises(SystemExit) as exc:
        tune.main([*tiny_args(tiny, tmp_path / "out"), *flags, "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1]
    assert not db.exists() and not (tmp_path / "out").exists()


# ---- pruning and failures (the training replaced by a stand-in) -------------------------------------
def fake_results(value: float) -> dict:
    per_rate = {f"{p:.1f}": {"acc2_has0": value, "f1_has0": value, "acc2_non0": value, "f1_non0": value,
                             "mae": 1.0 - value, "corr": value, "acc7": value, "ece": 0.5 - value / 2}
                for p in (0.0, 0.3, 0.5, 0.7)}
    return {"missing_rate": per_rate}


@pytest.fixture
def fake_training(monkeypatch):
    """run_experiment stand-in: lr 0.001 is good (0.8), lr 0.0001 bad (0.1), lr 0.01 diverges."""
    epochs_run: dict[str, int] = {}

    def fake(cfg, on_epoch=None, splits=("valid", "test"), data=None, stats=None):
        assert splits == ("valid",), "the test split must not be touched while searching"
        if cfg.lr == 0.01:
            raise NonFiniteLossError("loss term 'reg' became nan at epoch 1")
        value = 0.8 if cfg.lr == 0.001 else 0.1
        for epoch in range(1, cfg.epochs + 1):
            epochs_run[cfg.output_dir] = epoch
            if on_epoch is not None:
                on_epoch(0, epoch, value)
        return {"valid": {"results": fake_results(value)}}

    monkeypatch.setattr(tune, "run_experiment", fake)
    return epochs_run


class Records(logging.Handler):
    """Collects the log records that reach Optuna's handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow
def test_pruner_stops_a_bad_trial_and_a_failed_trial_does_not_end_the_study(tiny, tmp_path, fake_training):
    out, url = tmp_path / "out", f"sqlite:///{tmp_path / 'study.db'}"
    (tmp_path / "space.yaml").write_text("lr: [0.001, 0.0001, 0.01]\n")
    study = optuna.create_study(storage=url, study_name="prune", direction="maximize")
    for lr in (0.001, 0.001, 0.001, 0.0001, 0.01, 0.001):
        study.enqueue_trial({"lr": lr})
    argv = tiny_args(tiny, out, "--epochs", "6", "--storage", url, "--study_name", "prune", "--n_trials", "6",
                     "--search_space", str(tmp_path / "space.yaml"), "--skip_final_eval")
    seen = Records()
    logging.getLogger("optuna").addHandler(seen)
    try:
        assert tune.main(argv) == 0
    finally:
        logging.getLogger("optuna").removeHandler(seen)
    failed = [r for r in seen.records if "Trial 4 failed with parameters" in r.getMessage()]
    assert failed and "NonFiniteLossError" in failed[0].getMessage() and failed[0].exc_info is None  # one line
    trials = load(url, "prune").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.FAIL,
                                                                     TrialState.COMPLETE]
    pruned = trials[3]
    assert max(pruned.intermediate_values) < 6 and fake_training[str(out / "trials" / "trial_3")] < 6
    assert "NonFiniteLossError" in trials[4].user_attrs["fail_reason"]
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == pytest.approx(0.8) and best["params"] == {"lr": 0.001}
    assert best["trials"] == {"complete": 4, "pruned": 1, "fail": 1, "running": 0, "waiting": 0}
    assert (out / "trials.csv").read_text().count("\n") == 7


@pytest.mark.slow
def test_multi_objective_reports_the_pareto_front(tiny, tmp_path, fake_training):
    out = tmp_path / "out"
    (tmp_path / "space.json").write_text('{"lr": {"type": "categorical", "choices": [0.001, 0.0001]}}')
    argv = tiny_args(tiny, out, "--n_trials", "4", "--search_space", str(tmp_path / "space.json"),
                     "--objective", "f1_robust", "ece", "--directions", "maximize", "minimize",
                     "--sampler_seed", "1", "--skip_final_eval")
    assert tune.main(argv) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["objectives"] == ["f1_robust", "ece"] and best["params"] == {"lr": 0.001}
    assert best["values"] == pytest.approx([0.8, 0.1]) and best["pareto_front"]
    assert all(p["command"].startswith("bash train_v4.sh ") for p in best["pareto_front"])


def test_a_study_is_resumed_only_on_the_data_it_searched(tiny, tmp_path, fake_training, capsys):
    # a study kept no record of its data: a rerun on another file added its trials to the same study,
    # and --n_trials 0 retrained the best trial and tested it on the other file
    out, url = tmp_path / "out", f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="s", direction="maximize")  # made before the data was recorded
    (tmp_path / "space.yaml").write_text("lr: [0.001, 0.0001]\n")
    flags = ("--storage", url, "--study_name", "s", "--search_space", str(tmp_path / "space.yaml"), "--skip_final_eval")
    assert tune.main(tiny_args(tiny, out, *flags, "--n_trials", "1")) == 0
    tiny_data = {"dataset": "tiny", "file": "tiny.pkl", "synthetic_seed": None,
                 "sizes": {"train": 96, "valid": 48, "test": 64}}
    recorded = load(url, "s").user_attrs["data"]
    assert {k: v for k, v in recorded.items() if k != "digests"} == tiny_data
    assert set(recorded["digests"]) == {"train", "valid", "test"}
    best = (out / "best.json").read_bytes()
    other = tiny_pickle(tmp_path / "other.pkl", n=(90, 48, 64))
    capsys.readouterr()
    for n_trials in ("1", "0"):
        assert tune.main(tiny_args(other, out, *flags, "--n_trials", n_trials)) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            "error: study 's' was run on tiny.pkl (96/48/64 train/valid/test samples), not on other.pkl "
            "(90/48/64 train/valid/test samples); give another --study_name or the same --data_path/--dataset"]
    assert len(load(url, "s").trials) == 1 and (out / "best.json").read_bytes() == best
    # into a new folder: refused the same way, and the folder is not left behind claiming study 's'
    assert tune.main(tiny_args(other, tmp_path / "new" / "out", *flags, "--n_trials", "1")) == 1
    assert "study 's' was run on tiny.pkl" in capsys.readouterr().err and not (tmp_path / "new" / "out").exists()
    # the same file where another worker mounts it: the same study, and best.json names this worker's path
    moved = tmp_path / "mnt" / "tiny.pkl"
    moved.parent.mkdir()
    moved.write_bytes(tiny.read_bytes())
    assert tune.main(tiny_args(moved, out, *flags, "--n_trials", "1")) == 0
    assert len(load(url, "s").trials) == 2 and load(url, "s").user_attrs["data"] == recorded
    # another file of the same name and sizes: other samples and labels (was: searched as the same data)
    (tmp_path / "elsewhere").mkdir()
    lookalike = tiny_pickle(tmp_path / "elsewhere" / "tiny.pkl", seed=1)
    capsys.readouterr()
    assert tune.main(tiny_args(lookalike, out, *flags, "--n_trials", "1")) == 1
    assert "(the same name and sizes, other samples or labels)" in capsys.readouterr().err
    report = json.loads((out / "best.json").read_text())
    assert report["config"]["data_path"] == str(moved) and str(moved) in report["command"]
    from datasets import make_synthetic

    synthetic = make_synthetic(seed=3)
    assert tune.describe_data(tune.data_identity(Config(synthetic_seed=3), synthetic)) == \
        "the embedded synthetic data (--synthetic_seed 3) (1284/229/686 train/valid/test samples)"


def lockstep(schedule: str, values: dict[str, str], monkeypatch) -> tuple[dict[str, str], dict]:
    """Workers (name -> value) run ``tune.record_once`` on one new study, their storage reads and writes
    taken one at a time in the order of ``schedule`` (a worker that has finished is skipped; the
    rest run to the end). Returns each worker's outcome ("runs"/"stops") and the study's attributes."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    read, write = optuna.Study.user_attrs.fget, optuna.Study.set_user_attr
    who, cond = threading.local(), threading.Condition()
    waiting, done, turn, outcome = set(), set(), [None], {}

    def gated(op):
        def run(*args):
            with cond:  # held while the step runs: the next turn is given only once it is over
                waiting.add(who.name)
                cond.notify_all()
                cond.wait_for(lambda: turn[0] == who.name)
                waiting.discard(who.name)
                try:
                    return op(*args)
                finally:
                    turn[0] = None
                    cond.notify_all()
        return run

    def worker(name: str) -> None:
        who.name = name
        try:
            tune.record_once(optuna.load_study(storage=storage, study_name="s"), "data", values[name],
                             lambda other, claimed: f"{other} {claimed}")
            outcome[name] = "runs"
        except tune.TuneError:
            outcome[name] = "stops"
        finally:
            with cond:
                done.add(name)
                cond.notify_all()

    with monkeypatch.context() as patch:
        patch.setattr(optuna.Study, "user_attrs", property(gated(read)))
        patch.setattr(optuna.Study, "set_user_attr", gated(write))
        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in values]
        for t in threads:
            t.start()
        for name in schedule + "".join(values) * 8:
            with cond:
                assert cond.wait_for(lambda name=name: name in waiting or name in done, timeout=10)
                if name in done:
                    continue
                turn[0] = name
                cond.notify_all()
                assert cond.wait_for(lambda: turn[0] is None, timeout=10)
        for t in threads:
            t.join(10)
    return outcome, optuna.load_study(storage=storage, study_name="s").user_attrs


def test_workers_that_start_a_new_study_together_never_both_run_on_different_values(monkeypatch):
    # two workers read "no data recorded yet" before either wrote, and the last write won: both searched
    # one study, each on its own file. Every interleaving of two workers' five storage steps, and a
    # sample of those of three (two of them on the same data: one's withdrawal must not clear the other's claim)
    schedules = {"AB": ["".join(s) for s in set(itertools.permutations("AAAAABBBBB"))],
                 "ABC": ["BCCCAABAABBC"]  # C's record came last: B on b and C on a both ran
                 + ["".join(random.Random(k).sample("AAAAABBBBBCCCCC", 15)) for k in range(200)]}
    for names, values in (("AB", {"A": "a", "B": "b"}), ("ABC", {"A": "a", "B": "b", "C": "a"})):
        for schedule in schedules[names]:
            outcome, attrs = lockstep(schedule, values, monkeypatch)
            ran = {values[n] for n, o in outcome.items() if o == "runs"}
            assert len(outcome) == len(values) and len(ran) <= 1, (schedule, outcome)
            assert attrs.get("data") == (ran.pop() if ran else None), (schedule, attrs)
    assert lockstep("AAAAABBBBB", {"A": "a", "B": "b"}, monkeypatch)[0] == {"A": "runs", "B": "stops"}


def test_another_workers_claim_stops_a_start_on_other_data_until_it_lapses(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ns = argparse.Namespace(study_name="s", directions=["maximize"], objective=["f1_robust"], sampler_seed=None)
    a, b = ({"dataset": name, "file": f"{name}.pkl", "synthetic_seed": None, "sizes": {"train": n}}
            for name, n in (("a", 9), ("b", 8)))
    start = functools.partial(tune.create_or_load_study, ns, optuna.storages.RDBStorage(url),
                              optuna.pruners.NopPruner())
    start(a)
    study = load(url, "s")
    study.set_user_attr("data", None)  # as if a had died between its claim and its record
    study.set_user_attr("data:dead", {"value": a, "at": time.time()})
    with pytest.raises(tune.TuneError) as err:
        start(b)
    assert str(err.value) == (
        "study 's' is being started by another worker on a.pkl (9 train samples), not on b.pkl (8 train samples); "
        "give another --study_name or the same --data_path/--dataset (if that worker died, its claim lapses 120 s "
        "after it was made)")
    study.set_user_attr("data:dead", {"value": a, "at": time.time() - tune.CLAIM_SECONDS - 1})  # lapsed
    start(b)
    assert load(url, "s").user_attrs["data"] == b
    with pytest.raises(tune.TuneError, match=r"^study 's' was run on b\.pkl \(8 train samples\), not on a\.pkl"):
        start(a)
    # a start slower than half the lapse gives its claim up: others may already count it as a dead worker's
    monkeypatch.setattr(tune, "CLAIM_SECONDS", 0.0)
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    with pytest.raises(tune.TuneError, match=r"^starting study 's' took over 0 s \(a slow storage\?\); rerun"):
        tune.create_or_load_study(ns, optuna.storages.RDBStorage(url), optuna.pruners.NopPruner(), a)
    attrs = load(url, "s").user_attrs
    assert "objectives" not in attrs and all(v is None for k, v in attrs.items() if ":" in k)


def test_a_study_refuses_trials_under_other_settings_but_reports_with_any(tiny, tmp_path, fake_training, capsys):
    # another --epochs or search space joined the same study: a 3-epoch trial ranked against 2-epoch ones,
    # and a narrowed categorical made every new trial fail while the run exited 0
    out = tmp_path / "out"
    (tmp_path / "space.yaml").write_text("lr: [0.001, 0.0001]\n")
    (tmp_path / "other.yaml").write_text("lr: [0.001, 0.01]\n")
    flags = ("--search_space", str(tmp_path / "space.yaml"), "--skip_final_eval")
    assert tune.main(tiny_args(tiny, out, *flags, "--n_trials", "1")) == 0
    capsys.readouterr()
    for extra, difference in ((("--epochs", "3"), "epochs 2 (now 3)"),
                              (("--search_space", str(tmp_path / "other.yaml")), "the search space (lr)")):
        assert tune.main(tiny_args(tiny, out, *flags, "--n_trials", "1", *extra)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: study 'attention_robust_v4_tiny' was run with other settings: {difference}; give "
                       "another --study_name, or the same flags and --search_space"], err
    study = optuna.load_study(study_name="attention_robust_v4_tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 1
    assert tune.main(tiny_args(tiny, out, *flags, "--n_trials", "1", "--device", "cpu")) == 0  # per worker: same
    assert tune.main(tiny_args(tiny, out, *flags, "--n_trials", "0", "--epochs", "3")) == 0  # a report runs none


def test_the_retrained_best_trial_is_reused_only_on_the_same_test_data(tmp_path, monkeypatch):
    # a data file rewritten in place (same path, other labels) reused best/ and reported its old test numbers
    from datasets import make_synthetic
    from report.run_report import data_block

    data, other = make_synthetic(seed=0), make_synthetic(seed=1)
    cfg = Config(output_dir=str(tmp_path / "best"))
    retrained = []

    def fake(c, data=None, stats=None):
        retrained.append(c.output_dir)
        (tmp_path / "best" / "metrics.json").write_text(json.dumps(done | {"data": data_block(data)}))
        return {"test": {"table": "t"}}

    monkeypatch.setattr(tune, "run_experiment", fake)
    (tmp_path / "best").mkdir()
    done = {"config": cfg.to_dict(), "validation": {}, "data": data_block(data)}
    (tmp_path / "best" / "metrics.json").write_text(json.dumps(done))
    assert tune.evaluate_best(cfg, data, None)["data"] == data_block(data) and not retrained  # reused
    assert tune.evaluate_best(cfg, other, None)["data"] == data_block(other) and len(retrained) == 1


def test_a_second_study_cannot_write_into_the_first_ones_folder(tiny, tmp_path, fake_training, capsys):
    # was: following "give another --study_name" in the same --output_dir overwrote trials/trial_0, best.json
    out = tmp_path / "out"
    (tmp_path / "space.yaml").write_text("lr: [0.001, 0.0001]\n")
    flags = ("--search_space", str(tmp_path / "space.yaml"), "--skip_final_eval", "--n_trials", "1")
    assert tune.main(tiny_args(tiny, out, *flags)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"}
    capsys.readouterr()
    assert tune.main(tiny_args(tiny, out, *flags, "--study_name", "s_mae", "--objective", "mae")) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out.resolve()} holds the outputs of study 'attention_robust_v4_tiny'; give study 's_mae' its own "
        "--output_dir"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"} == before
    assert tune.main(tiny_args(tiny, out, *flags)) == 0  # the same study goes on there


def test_a_folder_is_named_for_its_study_only_once_the_study_has_started(tiny, tmp_path, fake_training, monkeypatch,
                                                                          capsys):
    # was: named before the study started, and taken back when it could not start: a worker refused
    # there (other data) unnamed the folder of a worker that had started in the meantime
    (tmp_path / "space.yaml").write_text("lr: [0.001, 0.0001]\n")
    out = tmp_path / "out"
    flags = ("--search_space", str(tmp_path / "space.yaml"), "--skip_final_eval", "--n_trials", "1",
             "--storage", f"sqlite:///{out / 'study.db'}", "--study_name", "s")  # a SQLite file in a new folder
    seen = []
    start = tune.create_or_load_study

    def spy(*args, **kwargs):
        seen.append((out / ".study").exists())
        return start(*args, **kwargs)

    monkeypatch.setattr(tune, "create_or_load_study", spy)
    assert tune.main(tiny_args(tiny, out, *flags)) == 0
    assert seen == [False] and (out / ".study").read_text() == "s\n"
    other = tiny_pickle(tmp_path / "other.pkl", n=(90, 48, 64))
    capsys.readouterr()
    assert tune.main(tiny_args(other, out, *flags)) == 1
    assert "study 's' was run on tiny.pkl" in capsys.readouterr().err and (out / ".study").read_text() == "s\n"
    assert seen == [False, True]


def test_a_study_that_searched_against_its_objective_is_named_as_such(tiny, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", directions=["minimize"])  # --directions minimize, once
    study.set_user_attr("objectives", ["f1_robust"])
    flags = ("--storage", url, "--study_name", "s", "--n_trials", "0")
    assert tune.main([*tiny_args(tiny, tmp_path / "out"), *flags]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: study 's' searched ['f1_robust'] in directions ['minimize'], against what they measure (its best "
        "trials are the worst runs); give another --study_name"]


def test_an_output_dir_that_cannot_be_made_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    assert tune.main(tiny_args(tiny, taken, "--n_trials", "1")) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot write {taken}: File exists; a file stands where a folder is needed; choose another "
        "--output_dir"]
    assert taken.read_text() == "keep me\n"
    read_only = tmp_path / "mounted" / "out"
    mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self == read_only:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert tune.main(tiny_args(tiny, read_only, "--n_trials", "1")) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot write {read_only}: Read-only file system; choose an --output_dir you can write to"]


def test_an_unreadable_cached_best_run_is_one_line_and_kept(tiny, tmp_path, fake_training, capsys):
    out = tmp_path / "out"
    (tmp_path / "space.yaml").write_text("lr: [0.001]\n")
    argv = tiny_args(tiny, out, "--search_space", str(tmp_path / "space.yaml"))
    assert tune.main([*argv, "--n_trials", "1", "--skip_final_eval"]) == 0
    (out / "best").mkdir()
    metrics = out / "best" / "metrics.json"
    capsys.readouterr()
    for text, reason in (('{"x":', "unreadable (Expecting value: line 1 column 6 (char 5))"),
                         ("[1, 2]", "not a metrics mapping")):
        metrics.write_text(text)
        # the fake training refuses the test split: the best trial is not retrained over the file
        assert tune.main([*argv, "--n_trials", "0"]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {metrics} is {reason}; move or remove {out / 'best'} to retrain the best trial there"]
        assert metrics.read_text() == text


def test_every_trial_with_compile_compiles_its_own_forward(tiny, tmp_path, monkeypatch):
    # the training forward's code is the same in every trial: without a reset between trials, each
    # new shape (e.g. a width) added a graph until torch's recompile limit (8), and later trials ran
    # uncompiled
    import torch

    compiled: list[int] = []

    def fake(cfg, on_epoch=None, splits=("valid", "test"), data=None, stats=None):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        step = torch.compile(lambda x: torch.tanh(x) * 2, backend="eager", dynamic=False)
        step(torch.ones(round(cfg.lr * 1000)))  # a shape of its own per proposed lr
        compiled.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
        return {"valid": {"results": fake_results(0.5)}}

    monkeypatch.setattr(tune, "run_experiment", fake)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)  # reached sooner than torch's 8
    (tmp_path / "space.json").write_text('{"lr": {"type": "categorical", "choices": [0.001, 0.002, 0.003, 0.004]}}')
    argv = tiny_args(tiny, tmp_path / "out", "--n_trials", "6", "--search_space", str(tmp_path / "space.json"),
                     "--compile", "default", "--pruner", "none", "--skip_final_eval")
    assert tune.main(argv) == 0
    assert compiled == [1] * 6, compiled


@pytest.mark.slow
def test_rerun_with_the_same_sampler_seed_proposes_new_parameters(tiny, tmp_path, fake_training):
    (tmp_path / "space.yaml").write_text("lr: {low: 1.0e-4, high: 1.0e-2, log: true}\ndropout: {low: 0.0, high: 0.5}\n")

    def two_trials(out: Path) -> list[dict]:
        argv = tiny_args(tiny, out, "--n_trials", "2", "--sampler_seed", "3", "--search_space",
                         str(tmp_path / "space.yaml"), "--pruner", "none", "--skip_final_eval")
        assert tune.main(argv) == 0
        return [t.params for t in load(f"sqlite:///{out.resolve() / 'study.db'}", "attention_robust_v4_tiny").trials]

    first = two_trials(tmp_path / "out")
    both = two_trials(tmp_path / "out")  # the same command again: 2 more trials in the same study
    assert both[:2] == first and len(both) == 4
    (tmp_path / "out" / "best.json").unlink()
    assert tune.main(tiny_args(tiny, tmp_path / "out", "--n_trials", "0", "--skip_final_eval")) == 0  # report only
    assert json.loads((tmp_path / "out" / "best.json").read_text())["params"] in both
    assert len(load(f"sqlite:///{(tmp_path / 'out').resolve() / 'study.db'}", "attention_robust_v4_tiny").trials) == 4
    assert not any(p in first for p in both[2:]), "the rerun re-proposed the first run's parameters"
    assert two_trials(tmp_path / "other") == first  # a new study with the same seed: the same proposals


# ---- real training -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_trials_and_the_validation_block_are_scored_without_the_calibration_fitted_on_valid(tiny, tmp_path):
    """The objective and metrics.json's validation block: the uncalibrated model on valid, recomputed
    here from the saved checkpoint; the calibration stored beside it would change them."""
    out = tmp_path / "out"
    (tmp_path / "space.yaml").write_text("dropout: [0.1]\n")
    argv = tiny_args(tiny, out, "--n_trials", "1", "--objective", "ece", "--search_space",
                     str(tmp_path / "space.yaml"), "--eval_missing_rates", "0.0", "0.3", "0.5", "0.7")
    assert tune.main(argv) == 0
    trial = load(f"sqlite:///{out.resolve() / 'study.db'}", "attention_robust_v4_tiny").trials[0]
    validation = json.loads((out / "best" / "metrics.json").read_text())["validation"]
    cpu = torch.device("cpu")
    for run_dir, scored in ((out / "trials" / "trial_0", {"ece": trial.value,
                                                          "f1_robust": trial.user_attrs["valid_f1_robust"]}),
                            (out / "best", {o: tune.objective_value(o, validation) for o in ("ece", "f1_robust")})):
        model, cfg, stats, cal, _ = load_for_eval(run_dir / "seed_7" / "best.pt", cpu)
        valid = load_and_standardize(cfg, stats)[0].splits["valid"]
        plain, calibrated = (Evaluator.from_config(model, cfg, cpu, c).sweep(valid, cfg.eval_missing_rates, [])
                             for c in (None, cal))
        # the calibration fitted on valid does change the score
        assert abs(tune.objective_value("ece", calibrated) - tune.objective_value("ece", plain)) > 1e-4
        for name, value in scored.items():
            # 1e-6: the run scored on its own device (CUDA where there is one), this on the CPU
            assert value == pytest.approx(tune.objective_value(name, plain), abs=1e-6)


@pytest.mark.slow
def test_rerun_adds_trials_and_best_command_reproduces_the_value(tiny, tmp_path):
    out = tmp_path / "out"
    argv = tiny_args(tiny, out, "--study_name", "resume", "--sampler_seed", "0")
    r = tune_cli(*argv, "--n_trials", "2")
    assert r.returncode == 0, r.stderr
    url = f"sqlite:///{out.resolve() / 'study.db'}"
    assert states(load(url, "resume")).count(TrialState.COMPLETE) == 2
    r = tune_cli(*argv, "--n_trials", "1")
    assert r.returncode == 0, r.stderr
    assert len(load(url, "resume").trials) == 3  # resumed: added, not started over
    for n in range(3):
        assert (out / "trials" / f"trial_{n}" / "seed_7" / "best.pt").exists()
    assert not any(p.name.startswith("result_test") for p in (out / "trials").rglob("*"))  # valid only
    best = json.loads((out / "best.json").read_text())
    assert set(best) >= {"value", "params", "command", "test"}
    assert best["validation_rerun"]["f1_robust"] == pytest.approx(best["value"], abs=1e-6)
    assert json.loads((out / "best" / "metrics.json").read_text())["results"]["missing_rate"]
    assert (out / "trials.csv").exists() and list((out / "plots").iterdir())
    cmd = shlex.split(best["command"])
    assert cmd[:2] == ["bash", "train_v4.sh"]
    run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    retrained = Path(cmd[cmd.index("--output_dir") + 1])
    metrics = json.loads((retrained / "metrics.json").read_text())
    assert tune.objective_value("f1_robust", metrics["validation"]) == pytest.approx(best["value"], abs=1e-6)


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_resumes(tiny, tmp_path):
    out = tmp_path / "out"
    url = f"sqlite:///{out.resolve() / 'study.db'}"
    # heartbeats every second, stale after 2 s without one (the defaults are 10 s and 20 s)
    # the rerun has the same settings (a study refuses others): 30 epochs leave time to kill the first
    argv = tiny_args(tiny, out, "--study_name", "killed", "--skip_final_eval", "--pruner", "none",
                     "--heartbeat_interval", "1", "--grace_period", "2", "--epochs", "30", "--patience", "0")
    proc = start_tune(*argv, "--n_trials", "3")
    last = out / "trials" / "trial_0" / "seed_7" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert states(load(url, "killed")) == [TrialState.RUNNING]
    time.sleep(3)  # past the grace period: the next process fails the trial at its first trial start
    r = tune_cli(*argv, "--n_trials", "1")
    assert r.returncode == 0, r.stderr
    trials = load(url, "killed").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == "its process died"
    assert trials[1].params == trials[0].params  # the killed trial was retried


def two_workers(tiny: Path, tmp_path: Path, url: str, name: str) -> optuna.Study:
    procs = [start_tune(*tiny_args(tiny, tmp_path / f"worker_{i}", "--storage", url, "--study_name", name,
                                   "--n_trials", "2", "--sampler_seed", str(i), "--skip_final_eval",
                                   "--pruner", "none"))
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return load(url, name)


@pytest.mark.slow
def test_two_processes_share_a_sqlite_study(tiny, tmp_path):
    study = two_workers(tiny, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", "shared")
    assert states(study) == [TrialState.COMPLETE] * 4, [t.user_attrs.get("fail_reason") for t in study.trials]
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2


@pytest.mark.skipif(not PG_URL, reason="ATTENTION_ROBUST_PG_URL is unset: start a server with "
                                       "`export ATTENTION_ROBUST_PG_URL=$(bash scripts/postgres_study.sh)`")
@pytest.mark.slow
def test_two_processes_share_a_postgresql_study(tiny, tmp_path):
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        study = two_workers(tiny, tmp_path, PG_URL, name)
        assert states(study) == [TrialState.COMPLETE] * 4, [t.user_attrs.get("fail_reason") for t in study.trials]
        assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    finally:
        with contextlib.suppress(KeyError):  # the study was never created
            optuna.delete_study(study_name=name, storage=PG_URL)
