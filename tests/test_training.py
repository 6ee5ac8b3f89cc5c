"""End-to-end tests of ``attention_robust_v4.py``: artefacts, metrics, determinism, resume, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tests.conftest import ROOT
from tests.helpers import tiny_args, tiny_pickle
from training.cli import main

INTERFACES = ROOT.parent / "shared" / "spec" / "INTERFACES.md"
SECTIONS = ("missing_rate", "frame_missing_rate", "subsets")
METRICS = {"acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_pickle(tmp_path_factory.mktemp("data") / "tiny.pkl")


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(tiny_args(tiny, out, "--seeds", "7", "8")) == 0
    return out


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "attention_robust_v4.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_artefacts_follow_the_documented_schema(finished_run):
    m = json.loads((finished_run / "metrics.json").read_text())
    assert m["seeds"] == [7, 8]
    assert m["config"]["seeds"] == [7, 8] and m["config"]["hidden_dim"] == 16
    assert set(m["results"]["missing_rate"]) == {"0.0", "0.3", "0.5"}
    assert set(m["results"]["frame_missing_rate"]) == {"0.0", "0.5"}
    assert list(m["results"]["subsets"]) == ["T", "A", "V", "TA", "TV", "AV", "TAV"]
    for section in SECTIONS:
        for key, vals in m["results"][section].items():
            assert METRICS <= set(vals), (section, key)  # rows may carry more (acc5, n): INTERFACES.md
            assert METRICS <= set(m["std"][section][key])
            for name in ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "ece"):
                assert 0.0 <= vals[name] <= 1.0
    assert set(m["results"]["mean_over_rates"]) == {"missing_rate", "frame_missing_rate"}
    assert m["train_seconds"] > 0
    z = np.load(finished_run / "predictions.npz")
    n = len(z["labels"])
    assert z["rates"].tolist() == pytest.approx([0.0, 0.3, 0.5])
    assert z["preds"].shape == (2, 3, n) and z["masks"].shape == (2, 3, n, 3)
    assert z["probs"].shape == (2, 3, n, 2) and np.allclose(z["probs"].sum(-1), 1, atol=1e-5)
    assert z["subset_names"].tolist() == ["T", "A", "V", "TA", "TV", "AV", "TAV"]
    assert z["subset_preds"].shape == (2, 7, n)
    for f in ("results.csv", "missing_rates.png", "calibration.png", "risk_coverage.png", "config.json",
              "seed_7/best.pt", "seed_7/last.pt", "seed_8/best.pt"):
        assert (finished_run / f).exists(), f


@pytest.mark.slow
def test_masks_in_predictions_are_the_interfaces_masks(finished_run):
    from datasets import modality_masks

    z = np.load(finished_run / "predictions.npz")
    n = len(z["labels"])
    for i, p in enumerate(z["rates"]):
        assert np.array_equal(z["masks"][0, i], modality_masks(n, float(p)))


def _ece(p_pos: np.ndarray, y: np.ndarray) -> float:
    """Independent top-label ECE: 10 bins with explicit edges."""
    conf = np.maximum(p_pos, 1 - p_pos)
    correct = (p_pos >= 0.5) == y
    edges = np.linspace(0, 1, 11)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf >= lo) & (conf < hi) if hi < 1 else (conf >= lo)
        if sel.any():
            total += sel.sum() / len(conf) * abs(correct[sel].mean() - conf[sel].mean())
    return total


@pytest.mark.slow
def test_metrics_equal_a_direct_sklearn_computation(finished_run):
    m = json.loads((finished_run / "metrics.json").read_text())
    z = np.load(finished_run / "predictions.npz")
    y = z["labels"].astype(np.float64)
    non0 = y != 0
    for i, key in enumerate(("0.0", "0.3", "0.5")):
        per_seed = []
        for s in range(2):
            pred = z["preds"][s, i].astype(np.float64)
            p_pos = z["probs"][s, i, :, 1].astype(np.float64)
            per_seed.append({
                "acc2_non0": accuracy_score(y[non0] > 0, pred[non0] > 0),
                "f1_non0": f1_score(y[non0] > 0, pred[non0] > 0, average="weighted"),
                "acc2_has0": accuracy_score(y >= 0, pred >= 0),
                "f1_has0": f1_score(y >= 0, pred >= 0, average="weighted"),
                "mae": np.abs(pred - y).mean(),
                "corr": np.corrcoef(pred, y)[0, 1],
                "acc7": np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(y, -3, 3))),
                "ece": _ece(p_pos[non0], y[non0] > 0),
            })
        for name in METRICS:
            vals = [s[name] for s in per_seed]
            assert m["results"]["missing_rate"][key][name] == pytest.approx(np.mean(vals), abs=2e-6), name
            assert m["std"]["missing_rate"][key][name] == pytest.approx(np.std(vals), abs=2e-6), name
    for k, name in enumerate(z["subset_names"]):
        pred = z["subset_preds"][0, k]
        assert m["results"]["subsets"][name]["acc2_non0"] == pytest.approx(
            np.mean([accuracy_score(y[non0] > 0, z["subset_preds"][s, k][non0] > 0) for s in range(2)]), abs=1e-9)
        assert pred.shape == y.shape


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tiny, tmp_path):
    results = []
    for name in ("a", "b"):
        assert main(tiny_args(tiny, tmp_path / name)) == 0
        results.append(json.loads((tmp_path / name / "metrics.json").read_text())["results"])
    assert results[0] == results[1]


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    args = tiny_args(tiny, tmp_path / "whole", "--epochs", "6", "--batch_size", "4", "--seeds", "3", "4")
    assert main(args) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["results"]

    out = tmp_path / "killed"
    kill_args = tiny_args(tiny, out, "--epochs", "6", "--batch_size", "4", "--seeds", "3", "4")
    proc = subprocess.Popen([sys.executable, str(ROOT / "attention_robust_v4.py"), *kill_args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # kill during seed 3's training, once a couple of epochs are checkpointed
    while time.time() < deadline and proc.poll() is None:
        last = out / "seed_3" / "last.pt"
        if last.exists() and _epoch_of(last) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    time.sleep(0.05)  # land inside an epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    assert main([*kill_args, "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())["results"]
    assert resumed == whole


def _epoch_of(path: Path) -> int:
    from training.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # being replaced right now
        return 0


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_a_flag(finished_run, capsys):
    before = (finished_run / "metrics.json").read_bytes()
    assert main(["--output_dir", str(finished_run), "--quiet", "--no_tensorboard"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_and_keeps_the_run(finished_run, tiny, capsys):
    before = {p: (finished_run / p).read_bytes() for p in ("metrics.json", "config.json")}
    argv = tiny_args(tiny, finished_run, "--seeds", "7", "8", "--lr", "0.01", "--unimodal_weight", "1", "--resume")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was started with other settings" in err[0]
    assert "lr 0.001 -> 0.01" in err[0] and "unimodal_weight 0.0 -> 1.0" in err[0]
    assert {p: (finished_run / p).read_bytes() for p in before} == before


@pytest.mark.slow
def test_eval_only_on_another_file_uses_the_saved_statistics(finished_run, tmp_path, capsys):
    other = tiny_pickle(tmp_path / "other.pkl", seed=5)
    out = tmp_path / "eval"
    argv = ["--eval_only", "--checkpoint", str(finished_run), "--data_path", str(other), "--output_dir",
            str(out), "--quiet", "--eval_missing_rates", "0.0", "0.5", "--eval_frame_missing_rates", "0.0"]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [7, 8] and set(m["results"]["missing_rate"]) == {"0.0", "0.5"}
    assert "modality missing rate p" in capsys.readouterr().out


def test_nan_in_features_is_refused_with_a_clear_error(tmp_path, capsys):
    def corrupt(d):
        d["valid"]["audio"][3, 0, 1] = np.nan

    bad = tiny_pickle(tmp_path / "nan.pkl", edit=corrupt)
    assert main(tiny_args(bad, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "nan.pkl" in err and "valid" in err and "audio" in err and "Traceback" not in err


@pytest.mark.slow
def test_nan_loss_stops_with_the_term_and_step_and_keeps_the_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    import torch

    import training.trainer as trainer_mod

    real = trainer_mod.task_loss
    calls = {"n": 0}

    def poisoned(cfg, out, labels):
        calls["n"] += 1
        terms = real(cfg, out, labels)
        if calls["n"] == 9:  # epoch 2, step 9 with 96 samples in batches of 16
            terms["reg"] = terms["reg"] * torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(trainer_mod, "task_loss", poisoned)
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--epochs", "3")) == 1
    err = capsys.readouterr().err
    assert "'reg'" in err and "step 9" in err and "epoch 2" in err
    from training.checkpoint import load_checkpoint

    assert load_checkpoint(out / "seed_7" / "last.pt")["epoch"] == 1


def _interface_flags() -> set[str]:
    if not INTERFACES.exists():
        pytest.skip(f"{INTERFACES} is absent (../shared/spec beside the repo)")
    text = INTERFACES.read_text()
    train_part = text.split("## Hyperparameter search")[0]
    return {f for f in re.findall(r"`(--[a-z_]*[a-z])", train_part) if f != "--no"}


def test_every_interfaces_flag_exists():
    from training.config import build_parser

    known = {s for a in build_parser()._actions for s in a.option_strings}
    flags = _interface_flags()
    assert len(flags) > 25
    assert flags - known == set()
    for name in ("--use_contrastive", "--use_gated_fusion", "--use_aecf", "--use_vae", "--calibrate"):
        assert name.replace("--", "--no_") in known


@pytest.mark.slow
def test_unknown_flag_and_bad_values_get_a_clear_message():
    r = cli("--not_a_flag", "3")
    assert r.returncode == 2 and "unrecognized arguments: --not_a_flag" in r.stderr
    assert "Traceback" not in r.stderr
    for args, msg in ((["--dropout", "1.5"], "dropout must lie in [0, 1)"),
                      (["--epochs", "two"], "invalid int value: 'two'"),
                      (["--encoder", "gru"], "invalid choice: 'gru'"),
                      (["--hidden_dim", "30", "--num_heads", "4"], "multiple of num_heads")):
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_missing_data_file_is_a_one_line_error(tmp_path):
    r = cli("--data_path", str(tmp_path / "absent.pkl"), "--output_dir", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 1 and "absent.pkl" in r.stderr and "Traceback" not in r.stderr


def test_config_argv_round_trip_keeps_switches_explicit():
    import dataclasses

    from training.config import Config, config_from_args, config_to_argv

    cfg = dataclasses.replace(Config(), hidden_dim=64, use_aecf=True, use_vae=False, seeds=[1, 2], lr=3e-4)
    argv = config_to_argv(cfg)
    assert config_from_args(argv) == cfg
    # every model switch is spelt out, so the command means the same after a default flips
    for name in ("--use_aecf", "--no_use_vae", "--use_gated_fusion", "--calibrate", "--unimodal_weight",
                 "--distill_weight", "--standardize"):  # standardize shapes the training data: a switch
        assert name in argv


@pytest.mark.slow
def test_distillation_term_counts_only_samples_that_lost_a_modality(tiny, tmp_path, monkeypatch):
    """The teacher sees the batch before train-time dropout; without dropout there is nothing to distil."""
    import training.trainer as trainer_mod
    from training.checkpoint import load_checkpoint

    seen = []
    real = trainer_mod.distillation_loss

    def spy(student, teacher, select):
        seen.append((int(select.sum()), len(select), teacher["score"].requires_grad))
        return real(student, teacher, select)

    monkeypatch.setattr(trainer_mod, "distillation_loss", spy)
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--epochs", "1", "--distill_weight", "1.0")) == 0
    history = load_checkpoint(out / "seed_7" / "last.pt")["history"]
    assert history[0]["loss/distill"] > 0
    assert seen and all(0 < n <= b and not grad for n, b, grad in seen)
    seen.clear()
    out = tmp_path / "no_dropout"
    assert main(tiny_args(tiny, out, "--epochs", "1", "--distill_weight", "1.0", "--train_missing_rate", "0")) == 0
    assert not seen and load_checkpoint(out / "seed_7" / "last.pt")["history"][0]["loss/distill"] == 0


@pytest.mark.slow
def test_train_v4_sh_maps_variables_to_flags_the_cli_accepts():
    from training.config import config_from_args

    env = dict(os.environ, PYTHON="echo", USE_AECF="1", USE_VAE="0", UNIMODAL_WEIGHT="0", DISTILL_WEIGHT="0.5",
               SEEDS="1 2", QUIET="1", GATE_ALPHA="0.7")
    r = subprocess.run(["bash", str(ROOT / "train_v4.sh"), "--epochs", "3"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split()
    assert argv[0] == str(ROOT / "attention_robust_v4.py")  # by absolute path: no cd into the repo
    assert "--output_dir" not in argv  # the CLI gives the run its own folder
    cfg = config_from_args(argv[1:])
    assert (cfg.use_aecf, cfg.use_vae, cfg.unimodal_weight, cfg.distill_weight) == (True, False, 0.0, 0.5)
    assert (cfg.seeds, cfg.quiet, cfg.gate_alpha, cfg.epochs) == ([1, 2], True, 0.7, 3)
    r = subprocess.run(["bash", str(ROOT / "train_v4.sh")], env={**env, "USE_AECF": "maybe"}, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == "train_v4.sh: use_aecf must be 1 or 0, got 'maybe'"


@pytest.mark.slow
def test_a_run_without_output_dir_gets_its_own_folder_and_the_bar_warns_nothing(tiny, tmp_path, monkeypatch):
    import warnings

    monkeypatch.chdir(tmp_path)
    argv = [a for a in tiny_args(tiny, tmp_path, "--epochs", "1") if a not in ("--output_dir", str(tmp_path))]
    argv.remove("--quiet")  # the progress bar on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
        assert main(argv) == 0  # the same command again: a second folder, not "already holds a run"
    assert not [w for w in caught if "requires_grad" in str(w.message)]
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all((p / "metrics.json").exists() for p in runs)
    assert all(p.name.startswith("attention_robust_v4_tiny_") for p in runs)
    assert (tmp_path / "runs" / "latest").resolve() == runs[-1].resolve()


@pytest.mark.slow
def test_the_trainer_owns_the_kl_warm_up(finished_run):
    from training.checkpoint import load_checkpoint

    history = load_checkpoint(finished_run / "seed_7" / "last.pt")["history"]
    assert history[0]["loss/kl"] == 0 < history[1]["loss/kl"]  # epoch 1 of 5 warm-up epochs: scale 0
