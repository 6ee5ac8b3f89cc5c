"""End-to-end tests of ``attention_robust_v4.py``: artefacts, metrics, determinism, resume, errors."""

from __future__ import annotations

import contextlib
import errno
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
from tests.helpers import CUDA, need_cpu_compile, tiny_args, tiny_pickle
from training.cli import main

INTERFACES = ROOT / "docs" / "INTERFACES.md"
SECTIONS = ("missing_rate", "frame_missing_rate", "subsets")
METRICS = {"acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece"}
PROBABILITY_FIELDS = {"brier", "nll", "ece_twin_mean", "ece_twin_lo", "ece_twin_hi"}  # extra fields (INTERFACES)


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
            assert METRICS | PROBABILITY_FIELDS <= set(vals), (section, key)  # rows may carry more (acc5, n)
            assert METRICS | PROBABILITY_FIELDS <= set(m["std"][section][key])
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
    # fewer seeds: was accepted, and the report shrank to them
    assert main(tiny_args(tiny, finished_run, "--seeds", "8", "--resume")) == 1
    _one_line(capsys.readouterr().err, "--seeds 8 leaves out seed(s) 7 of")
    assert {p: (finished_run / p).read_bytes() for p in before} == before


def test_eval_only_never_writes_inside_the_run_and_a_failed_one_leaves_no_folder(finished_run, tmp_path, capsys,
                                                                                 caplog):
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    base = ["--eval_only", "--checkpoint", str(finished_run), "--quiet", "--eval_frame_missing_rates", "0.0"]
    # was: the report written into the evaluated run's seed folder
    assert main([*base, "--output_dir", str(finished_run / "seed_7")]) == 1
    _one_line(capsys.readouterr().err, "is inside the folder of the run being evaluated")
    # was: an empty folder holding only .lock
    assert main([*base, "--data_path", str(tmp_path / "bad.pkl"), "--output_dir", str(tmp_path / "ev")]) == 1
    assert "unreadable or truncated pickle" in capsys.readouterr().err and not (tmp_path / "ev").exists()


def test_eval_only_says_when_a_seed_did_not_finish_training(finished_run, tiny, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "seed_8" / "result.json").unlink()  # as if killed while training seed 8
    with caplog.at_level("WARNING"):
        assert main(["--eval_only", "--checkpoint", str(run), "--data_path", str(tiny), "--quiet",
                     "--eval_frame_missing_rates", "0.0", "--output_dir", str(tmp_path / "ev")]) == 0
    assert f"{run / 'seed_8'} did not finish training" in caplog.text and "seed_7 did not" not in caplog.text
    # and the evaluation's metrics.json says so: a comparison of it would show an ordinary row
    from report import compare

    unfinished = json.loads((tmp_path / "ev" / "metrics.json").read_text())["unfinished_checkpoints"]
    assert unfinished == [str(run / "seed_8" / "best.pt")]
    with pytest.warns(UserWarning, match=r"ev was evaluated from 1 checkpoint\(s\) of seeds that had not finished"):
        compare([tmp_path / "ev"], tmp_path / "cmp")


@pytest.mark.parametrize("flags, message", [
    (["--model", "lf_dnn", "--batch_size", "1"], "--model lf_dnn normalizes over the batch (BatchNorm): --batch_size "
                                                 "must be >= 2"),  # was: BatchNorm's ValueError after a seed began
    (["--output_dir", ""], "--output_dir is empty"),  # was: the run written into the current folder
    (["--data_path", ""], "--data_path is empty"),  # was: "error: : no such file or folder"
])
def test_settings_no_run_can_use_are_refused_in_one_line_before_any_folder(tiny, tmp_path, monkeypatch, capsys, flags,
                                                                           message):
    monkeypatch.chdir(tmp_path)
    argv = tiny_args(tiny, tmp_path / "out", *flags)  # the last of a flag given twice wins
    with pytest.raises(SystemExit) if "" in flags else contextlib.nullcontext() as exc:
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert exc is None or exc.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_training_split_of_one_sample_is_refused(tmp_path, capsys):
    data = tiny_pickle(tmp_path / "one.pkl", n=(1, 48, 64))  # was: finished after 0 optimizer steps
    assert main(tiny_args(data, tmp_path / "out")) == 1
    _one_line(capsys.readouterr().err, "the training split holds 1 sample; training needs at least 2")


def test_resume_into_a_run_without_its_config_is_refused_not_restarted_with_defaults(finished_run, tmp_path, capsys):
    # was: "holds no run yet; starting one there" with default settings, over the run's report
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    (out / "config.json").unlink()
    before = (out / "metrics.json").read_bytes()
    assert main(["--resume", "--output_dir", str(out), "--quiet"]) == 1
    _one_line(capsys.readouterr().err, "holds a run (metrics.json, seed_7/best.pt, seed_7/last.pt) but no config.json")
    assert (out / "metrics.json").read_bytes() == before


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
    # one seed's folder (it holds best.pt, no seed_*/): that seed alone; was "holds no seed_*/best.pt"
    argv[argv.index(str(out))] = str(tmp_path / "eval_seed")
    argv[argv.index(str(finished_run))] = str(finished_run / "seed_8")
    assert main(argv) == 0
    assert json.loads((tmp_path / "eval_seed" / "metrics.json").read_text())["seeds"] == [8]


def test_step_diagnostics_average_each_modality_over_the_rows_that_have_it():
    import torch

    from training.trainer import step_diagnostics

    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    presence = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    names, values = step_diagnostics({"fusion_weights": weights, "mask_rate": torch.tensor(0.25),
                                      "fused_std": torch.tensor([1.0, 2.0, 6.0])}, presence)
    assert names == ["fusion_weights/text", "fusion_weights/audio", "fusion_weights/vision", "mask_rate",
                     "fused_std"]
    # audio: rows 0 and 2 only; vision: no row has it, so 0 whatever its weights say
    torch.testing.assert_close(values, torch.tensor([0.6, 0.15, 0.0, 0.25, 3.0], dtype=torch.float64))
    assert step_diagnostics({}, presence)[1].shape == (0,)


def test_an_epochs_total_loss_is_the_sum_of_its_terms_and_every_diagnostic_is_reported(tmp_path):
    from datasets import MODALITIES, make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=40, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
    trainer = Trainer(Config(hidden_dim=16, num_heads=2, batch_size=8, epochs=1), data, 7, tmp_path, progress=False)
    stats = trainer.train_epoch()
    terms = [k for k in stats if k.startswith("loss/") and k != "loss/total"]
    assert {"loss/reg", "loss/cls", "loss/recon", "loss/kl", "loss/contrastive"} <= set(terms)
    assert stats["loss/total"] == pytest.approx(sum(stats[k] for k in terms), rel=1e-6)
    assert {f"diag/fusion_weights/{m}" for m in MODALITIES} | {"diag/aecf_mask_rate", "diag/fused_std"} <= set(stats)
    assert all(np.isfinite(v) for v in stats.values())


def test_nan_in_features_is_refused_with_a_clear_error(tmp_path, capsys):
    def corrupt(d):
        d["valid"]["audio"][3, 0, 1] = np.nan

    bad = tiny_pickle(tmp_path / "nan.pkl", edit=corrupt)
    assert main(tiny_args(bad, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "nan.pkl" in err and "valid" in err and "audio" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("per_step", [True, False], ids=["checked-each-step", "recorded-on-device"])
def test_nan_loss_stops_with_the_term_and_step_and_keeps_the_checkpoint(tiny, tmp_path, capsys, monkeypatch,
                                                                        per_step):
    # the same message whether the terms are checked at each step (CPU) or recorded on the device
    # and read after the epoch (CUDA): both paths run here, whatever the device
    import torch

    import training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "finite_check_per_step", lambda device: per_step)

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
    train_part = INTERFACES.read_text().split("## Other commands")[0]
    return {f for f in re.findall(r"`(--[a-z_]*[a-z])", train_part) if f != "--no"}


def _training_flags() -> set[str]:
    from training.config import build_parser

    return {s for a in build_parser()._actions for s in a.option_strings} | {"--threads"}


def test_every_interfaces_flag_exists():
    known = _training_flags()
    flags = _interface_flags()
    assert len(flags) > 25
    assert flags - known == set()
    for name in ("--use_contrastive", "--use_gated_fusion", "--use_aecf", "--use_vae", "--calibrate"):
        assert name.replace("--", "--no_") in known


def test_interfaces_names_every_training_flag():
    """docs/INTERFACES.md lists every training flag (its ``--no_`` twin aside) in its group table."""
    documented = _interface_flags()
    undocumented = {f for f in _training_flags() if not f.startswith("--no_") and f not in ("-h", "--help")}
    assert undocumented - documented == set()


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
def test_the_distillation_term_adds_no_host_sync_to_a_step(tmp_path):
    # it asked the device whether a sample lost a modality, then indexed the lost ones out: five
    # reads per step that a GPU step waits on; the epoch's dropout is drawn on the host and says it
    import torch

    from bench.throughput import op_counts
    from datasets import make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=32, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
    counts = {}
    for weight in (0.0, 0.5):
        trainer = Trainer(Config(hidden_dim=16, num_heads=2, batch_size=16, distill_weight=weight,
                                 train_missing_rate=0.5), data, 7, tmp_path / str(weight), progress=False)
        counts[weight] = op_counts(trainer, torch.device("cpu"))
    assert counts[0.5]["aten_ops"] > counts[0.0]["aten_ops"]  # the teacher's forward ran
    assert counts[0.5]["syncs"] == counts[0.0]["syncs"]


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


def test_resume_into_a_folder_without_a_run_says_it_starts_one(caplog):
    from training.config import Config
    from training.run import resume_settings

    cfg = Config(resume=True, output_dir="/nonexistent/run", lr=2e-3)
    with caplog.at_level("WARNING"):
        assert resume_settings(cfg, {"lr"}) is cfg
    assert "holds no run yet; starting one there" in caplog.text and "/nonexistent/run" in caplog.text


def test_a_missing_card_model_or_file_claims_no_run_folder(tiny, tmp_path, monkeypatch, capsys):
    # refused before runs/<model>_<data>_<time> is made and runs/latest moved to it
    monkeypatch.chdir(tmp_path)
    argv = [a for a in tiny_args(tiny, tmp_path) if a not in ("--output_dir", str(tmp_path))]
    for extra, message in ((["--device", "cuda:99"], "--device cuda:99"),
                           (["--model", "tfm"], "unknown --model 'tfm'"),
                           (["--data_path", "tiny.pk"], "--data_path tiny.pk: no such file or folder"),
                           (["--eval_only", "--checkpoint", "best.pt"], "--checkpoint best.pt: no such file")):
        assert main([*argv, *extra]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_data_file_that_cannot_be_read_leaves_no_run_folder_and_latest_where_it_was(tiny, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    argv = [a for a in tiny_args(tiny, tmp_path) if a not in ("--output_dir", str(tmp_path))]
    argv[argv.index("--data_path") + 1] = "bad.pkl"
    assert main(argv) == 1  # no earlier run: nothing is left, runs/latest included
    assert "bad.pkl: unreadable or truncated pickle" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []
    (tmp_path / "runs" / "earlier").mkdir()
    (tmp_path / "runs" / "latest").symlink_to("earlier")
    assert main(argv) == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier", "latest"]
    assert os.readlink(tmp_path / "runs" / "latest") == "earlier"
    monkeypatch.setenv("ATTENTION_ROBUST_DEBUG", "1")  # the traceback instead of the line: the same cleanup
    with pytest.raises(Exception, match="unreadable or truncated pickle"):
        main(argv)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier", "latest"]
    assert os.readlink(tmp_path / "runs" / "latest") == "earlier"
    monkeypatch.delenv("ATTENTION_ROBUST_DEBUG")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("training.run.load_data", interrupt)  # Ctrl-C while loading: the folder its message names stays
    assert main(argv) == 130
    folder = re.search(r"--output_dir (\S+) to continue", capsys.readouterr().err).group(1)
    assert os.readlink(tmp_path / "runs" / "latest") == Path(folder).name and Path(folder).is_dir()


def test_releasing_a_claimed_folder_spares_a_folder_in_use_and_never_leaves_latest_dangling(tmp_path):
    from training.cli import release_unused_run_dir
    from training.config import point_latest
    from training.run import run_lock

    root = tmp_path / "runs"
    for name in ("x", "y", "z"):
        (root / name).mkdir(parents=True)
        (root / name / ".lock").touch()
    point_latest(str(root), "y")
    with run_lock(root / "y"):  # another process (e.g. --resume --output_dir runs/latest) holds it
        release_unused_run_dir(str(root / "y"), "x", str(root))
    assert (root / "y").is_dir() and os.readlink(root / "latest") == "y"
    release_unused_run_dir(str(root / "y"), "x", str(root))
    assert not (root / "y").exists() and os.readlink(root / "latest") == "x"
    point_latest(str(root), "z")
    (root / "x" / ".lock").unlink()
    (root / "x").rmdir()  # the folder latest pointed at before is gone meanwhile
    release_unused_run_dir(str(root / "z"), "x", str(root))
    assert sorted(p.name for p in root.iterdir()) == []


@pytest.mark.slow
def test_a_run_without_output_dir_gets_its_own_folder_and_the_bar_warns_nothing(tiny, tmp_path, monkeypatch):
    import warnings

    monkeypatch.chdir(tmp_path)
    # batch 2: 48 steps, so the bar's loss readout (every 25 steps) runs
    argv = [a for a in tiny_args(tiny, tmp_path, "--epochs", "1", "--batch_size", "2")
            if a not in ("--output_dir", str(tmp_path))]
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


# ---- runs and run folders (issue 12 items 5-7, 10, 11, 15, 16) -------------------------------------
def _one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def plain_run(tiny, tmp_path_factory) -> Path:
    """A finished one-epoch run trained without standardization (a non-default flag)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    assert main(tiny_args(tiny, out, "--epochs", "1", "--no_standardize")) == 0
    return out


@pytest.mark.slow
def test_duplicate_seeds_are_refused():
    r = cli("--seeds", "7", "7")
    assert r.returncode == 2 and "names a seed twice" in r.stderr and "Traceback" not in r.stderr


def test_a_second_process_into_a_locked_folder_gets_one_line(tiny, tmp_path, capsys):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # another process's lock: flock conflicts across open files
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(tiny_args(tiny, out, "--epochs", "1")) == 1
        _one_line(capsys.readouterr().err, str(out), "in use by another run (process 4242)")
    assert not (out / "config.json").exists()


@pytest.mark.slow
def test_a_failed_start_does_not_block_the_corrected_command(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny, out, "--epochs", "1", "--model", "attention_robust_v5")) == 1
    _one_line(capsys.readouterr().err, "unknown --model 'attention_robust_v5'")
    assert main(tiny_args(tmp_path / "typo.pkl", out, "--epochs", "1")) == 1  # refused before the folder
    _one_line(capsys.readouterr().err, "--data_path " + str(tmp_path / "typo.pkl") + ": no such file or folder")
    assert not out.exists()
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")  # fails in loading, once the folder is made
    assert main(tiny_args(tmp_path / "broken.pkl", out, "--epochs", "1")) == 1
    _one_line(capsys.readouterr().err, "broken.pkl")
    assert not out.exists()  # the folder the run made is removed again
    (tmp_path / "kept").mkdir()
    assert main(tiny_args(tmp_path / "broken.pkl", tmp_path / "kept" / "a" / "b" / "run", "--epochs", "1")) == 1
    capsys.readouterr()
    assert list((tmp_path / "kept").iterdir()) == []  # and the parent folders made for it
    (tmp_path / "mine").mkdir()  # already there, reached through a folder that is not: kept
    assert main(tiny_args(tmp_path / "broken.pkl", tmp_path / "nope" / ".." / "mine", "--epochs", "1")) == 1
    capsys.readouterr()
    assert (tmp_path / "mine").is_dir()
    out.mkdir()
    (out / "config.json").write_text("{}")  # left by an older version's failed start: still no run
    assert main(tiny_args(tiny, out, "--epochs", "1")) == 0
    assert json.loads((out / "config.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_resume_takes_the_settings_of_the_run_folder(plain_run, tiny, tmp_path, capsys):
    """The README's resume command (no other flags) continues a run started with non-default flags."""
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(plain_run, out)
    (out / "seed_7" / "result.json").unlink()  # as if killed after training, before the sweep
    before = json.loads((out / "metrics.json").read_text())["results"]
    assert main(["--resume", "--output_dir", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["results"] == before
    # an explicit flag that changes what the run trains is still refused
    assert main(["--resume", "--output_dir", str(out), "--quiet", "--standardize"]) == 1
    _one_line(capsys.readouterr().err, "standardize False -> True")


@pytest.mark.slow
def test_eval_only_reproduces_the_run_with_its_own_settings_and_never_writes_into_it(plain_run, tiny, capsys):
    """A --no_standardize model is evaluated on unstandardized features without repeating the flag,
    and without --output_dir the report goes to a new folder beside the run."""
    before = {p.name: p.read_bytes() for p in plain_run.iterdir() if p.is_file()}
    argv = ["--eval_only", "--checkpoint", str(plain_run), "--data_path", str(tiny), "--quiet",
            "--eval_missing_rates", "0.0", "0.3", "0.5", "--eval_frame_missing_rates", "0.0", "0.5"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in plain_run.iterdir() if p.is_file()} == before
    first, second = plain_run.parent / "run_eval_tiny", plain_run.parent / "run_eval_tiny_2"
    assert f"wrote {second}/metrics.json" in capsys.readouterr().out
    trained = json.loads((plain_run / "metrics.json").read_text())
    for out in (first, second):
        m = json.loads((out / "metrics.json").read_text())
        assert m["results"] == trained["results"]
        assert m["config"]["standardize"] is False and m["config"]["checkpoint"] == str(plain_run)
    assert main([*argv, "--standardize"]) == 1
    _one_line(capsys.readouterr().err, "--standardize True (trained with False)", "drop the flag")
    assert main([*argv, "--output_dir", str(plain_run)]) == 1
    _one_line(capsys.readouterr().err, "folder of the run being evaluated")
    assert main([*argv, "--output_dir", str(first)]) == 1  # holds a report already
    _one_line(capsys.readouterr().err, "already holds a run")


def _save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


@pytest.mark.parametrize("content", [b"garbage\n", b"hello world\n", "a pickle of an object", "truncated"])
def test_a_foreign_file_as_checkpoint_is_one_line_without_torch_s_advice(tmp_path, recwarn, content):
    # torch's own message for these advises weights_only=False ("will likely succeed"): never for a foreign file;
    # a text file read "(101)" and a truncated one "([Errno 22] Invalid argument)" or miniz's paragraph
    import io
    import pickle

    import torch

    from training.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "foreign.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        buf = io.BytesIO()
        torch.save({"model": torch.ones(1000)}, buf)
        path.write_bytes(buf.getvalue()[:300])
    else:
        path.write_bytes(pickle.dumps({"a": object}, protocol=4))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, advice="point --checkpoint at a best.pt")
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and "not a checkpoint of this project" in message
    assert len(message) < 400 and "weights_only" not in message
    assert message.endswith("; point --checkpoint at a best.pt")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


@pytest.mark.slow
def test_unusable_checkpoints_get_one_line_naming_the_file(plain_run, tiny, tmp_path, capsys):
    import torch

    from training.checkpoint import load_checkpoint

    best = load_checkpoint(plain_run / "seed_7" / "best.pt")
    shapes = dict(best, model={k: torch.zeros(3) for k in best["model"]})
    no_std = {k: v for k, v in best.items() if k != "standardizer"}
    cases = {"empty": {}, "list": [1, 2], "no_std": no_std, "shapes": shapes, "truncated": None}
    for name, obj in cases.items():
        path = tmp_path / f"{name}.pt"
        if obj is None:
            path.write_bytes((plain_run / "seed_7" / "best.pt").read_bytes()[:300])
        else:
            _save(obj, path)
        assert main(["--eval_only", "--checkpoint", str(path), "--data_path", str(tiny), "--quiet",
                     "--output_dir", str(tmp_path / f"out_{name}")]) == 1, name
        _one_line(capsys.readouterr().err, str(path), "--checkpoint")
    other = tiny_pickle(tmp_path / "other_dims.pkl", dims=(12, 5, 9))
    assert main(["--eval_only", "--checkpoint", str(plain_run), "--data_path", str(other), "--quiet",
                 "--output_dir", str(tmp_path / "out_dims")]) == 1
    _one_line(capsys.readouterr().err, "other_dims.pkl", "'vision': 9", "'vision': 8")


@pytest.mark.slow
def test_a_broken_last_pt_on_resume_says_what_to_do(plain_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(plain_run, out)
    (out / "seed_7" / "result.json").unlink()
    _save([], out / "seed_7" / "last.pt")
    assert main(["--resume", "--output_dir", str(out), "--quiet"]) == 1
    _one_line(capsys.readouterr().err, str(out / "seed_7" / "last.pt"), "delete")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["result.json", "result_test.npz"])
def test_a_truncated_seed_result_on_resume_names_the_file(plain_run, tmp_path, capsys, victim):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(plain_run, out)
    path = out / "seed_7" / victim
    path.write_bytes(path.read_bytes()[:40])
    assert main(["--resume", "--output_dir", str(out), "--quiet"]) == 1
    _one_line(capsys.readouterr().err, str(path), "delete", "--resume")
    if victim == "result.json":  # what the message says to do works
        path.unlink()
        assert main(["--resume", "--output_dir", str(out), "--quiet"]) == 0


@pytest.mark.slow
def test_nan_loss_in_the_first_epoch_names_no_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    import torch

    import training.trainer as trainer_mod

    real = trainer_mod.task_loss

    def poisoned(cfg, out, labels):
        terms = real(cfg, out, labels)
        terms["reg"] = terms["reg"] * torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(trainer_mod, "task_loss", poisoned)
    assert main(tiny_args(tiny, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    _one_line(err, "epoch 1", "no epoch finished, so there is no checkpoint")
    assert "last.pt" not in err


@pytest.mark.slow
def test_output_dir_problems_get_one_line(tiny, tmp_path, capsys, monkeypatch):
    import errno

    import report.run_report as report_mod

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        assert main(tiny_args(tiny, out, "--epochs", "1")) == 1
        _one_line(capsys.readouterr().err, str(a_file))

    def full_disk(path, **arrays):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_mod.np, "savez_compressed", full_disk)
    out = tmp_path / "full"
    assert main(tiny_args(tiny, out, "--epochs", "1")) == 1
    _one_line(capsys.readouterr().err, str(out), "No space left on device", "free some disk space")
    assert not list(out.glob("*.tmp*")) and (out / "seed_7" / "result.json").exists()
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    import training.run as run_mod

    monkeypatch.setattr(run_mod.Path, "mkdir", read_only)
    assert main(tiny_args(tiny, tmp_path / "ro" / "run", "--epochs", "1")) == 1
    _one_line(capsys.readouterr().err, "Permission denied", "choose an --output_dir you can write to")


def test_huge_finite_test_features_are_refused_before_training(tmp_path, capsys):
    def huge(d):
        d["test"]["audio"][2, 1, 0] = 3e38

    bad = tiny_pickle(tmp_path / "huge.pkl", edit=huge)
    out = tmp_path / "out"
    assert main(tiny_args(bad, out)) == 1
    _one_line(capsys.readouterr().err, "huge.pkl", "'test'", "'audio'", "feature values reach", "fix or remove")
    assert not (out / "seed_7").exists()


def _loud(argv: list[str]) -> list[str]:
    return [a for a in argv if a != "--quiet"]


@pytest.mark.slow
def test_length_one_data_skips_the_frame_sweep_with_one_note(tmp_path, caplog, capsys):
    import logging

    data = tiny_pickle(tmp_path / "utterance.pkl", seq_len=1)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(_loud(tiny_args(data, out, "--epochs", "1"))) == 0
    notes = [r.getMessage() for r in caplog.records if "frame-level sweep is skipped" in r.getMessage()]
    assert len(notes) == 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["results"]["frame_missing_rate"] == {} and "frame_missing_rate" not in m["results"]["mean_over_rates"]
    assert "frame missing rate" not in capsys.readouterr().out


@pytest.mark.slow
def test_threads_progress_and_what_is_happening(tiny, tmp_path, caplog, capsys):
    import logging

    import torch

    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            assert main(_loud(tiny_args(tiny, tmp_path / "out", "--epochs", "1", "--seeds", "7", "8",
                                        "--threads", "1"))) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "seed 8 (2 of 2)" in err
    said = " | ".join(r.getMessage() for r in caplog.records)
    for what in ("loading ", "calibrating the best epoch", "evaluating on test"):
        assert what in said, what


@pytest.mark.slow
def test_an_internal_bug_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    """Only user errors become one line: a plain ValueError from inside is a bug, raised as is."""
    import training.run as run_mod

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(run_mod, "aggregate", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(tiny_args(tiny, tmp_path / "out", "--epochs", "1"))


# ---- devices (issue 11 item 1) -------------------------------------------------------------------------
def test_the_training_steps_leave_the_presence_check_to_the_epochs_masks(tmp_path, monkeypatch):
    # the model's per-batch presence check is a host sync on a GPU: within an epoch the trainer has
    # checked all its dropout masks up front, and every forward of the epoch runs within presence_checked
    import modules.presence as presence_mod
    from datasets import make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=64, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
    trainer = Trainer(Config(device="cpu", hidden_dim=16, num_heads=2, batch_size=16, epochs=1), data, 7, tmp_path,
                      progress=False)
    seen, fuse = [], type(trainer.model).fuse

    def spy(self, states, presence):
        seen.append(presence_mod._checked.get())
        return fuse(self, states, presence)

    monkeypatch.setattr(type(trainer.model), "fuse", spy)
    trainer.train_epoch()
    assert len(seen) == 4 and all(seen) and not presence_mod._checked.get()


def test_rng_state_of_a_cpu_run_leaves_cuda_alone_and_a_cuda_run_keeps_its_own_card(monkeypatch):
    # was: every card's CUDA generator was saved whenever a GPU was present: a --device cpu run made a
    # CUDA context on card 0, and a run resumed on cuda:1 got card 0's state back
    import torch

    from training.checkpoint import rng_state, set_rng_state

    def untouchable(*args, **kwargs):
        raise AssertionError("a CPU run touched CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, untouchable)
    np_rng, gen = np.random.default_rng(0), torch.Generator()
    state = rng_state(np_rng, gen, torch.device("cpu"))
    assert not {"cuda", "cuda_device"} & set(state)
    set_rng_state(state, np_rng, gen, torch.device("cpu"))

    cards = [torch.full((4,), k, dtype=torch.uint8) for k in range(2)]
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cards[device.index or 0])
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: restored.append((int(new[0]), device)))
    state = rng_state(np_rng, gen, torch.device("cuda:1"))
    assert "cuda" not in state and int(state["cuda_device"][0]) == 1
    set_rng_state(state, np_rng, gen, torch.device("cuda:0"))  # resumed on another card: the saved state
    older = {**state, "cuda": cards}  # an older version's checkpoint: every card's state
    del older["cuda_device"]
    set_rng_state(older, np_rng, gen, torch.device("cuda:1"))
    set_rng_state(older, np_rng, gen, torch.device("cuda:5"))  # fewer cards then: the first one's
    assert restored == [(1, torch.device("cuda:0")), (1, torch.device("cuda:1")), (0, torch.device("cuda:5"))]


@pytest.mark.slow
def test_host_state_stays_on_the_host_whatever_map_location(plain_run, finished_run):
    """Loading onto another device (the meta device stands in for a GPU) moves the model and
    optimizer state only: RNG states, calibration and standardizer stay CPU tensors that
    torch.set_rng_state, a Generator and numpy accept."""
    import torch

    from datasets import Standardizer
    from training.calibration import Calibration
    from training.checkpoint import load_checkpoint

    last = load_checkpoint(plain_run / "seed_7" / "last.pt", map_location="meta")
    assert all(t.device.type == "meta" for t in last["model"].values())
    opt = [t for s in last["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert opt and all(t.device.type == "meta" for t in opt)
    assert last["rng"]["torch"].device.type == "cpu" and last["rng"]["loader"].device.type == "cpu"
    state = torch.get_rng_state()
    torch.set_rng_state(last["rng"]["torch"])
    torch.set_rng_state(state)
    torch.Generator().set_state(last["rng"]["loader"])
    best = load_checkpoint(plain_run / "seed_7" / "best.pt", map_location=torch.device("meta"))
    cal = Calibration.from_state_dict(best["calibration"])
    assert cal.temperatures.shape == (7,) and np.all(cal.temperatures > 0)
    stats = load_checkpoint(finished_run / "seed_7" / "best.pt", map_location="meta")["standardizer"]
    assert stats and all(v.device.type == "cpu" for v in stats.values())
    assert Standardizer.from_state_dict(stats).std["audio"].shape == (5,)


@pytest.mark.slow
def test_device_names_are_checked():
    import torch

    from training.errors import ConfigError
    from training.trainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match="no CUDA device is available" if n == 0 else "cuda:0 to"):
        resolve_device(f"cuda:{n}")
    r = cli("--device", "gpu0")
    assert r.returncode == 2 and "use auto, cpu, cuda or cuda:N" in r.stderr


@pytest.mark.slow
@CUDA
@pytest.mark.parametrize("amp", ["--amp", "--no_amp"])
def test_resume_and_eval_only_on_cuda(tiny, tmp_path, amp):
    out = tmp_path / "run"
    args = tiny_args(tiny, out, "--device", "cuda:0", amp)
    assert main(args) == 0
    (out / "seed_7" / "result.json").unlink()
    assert main([*args, "--resume"]) == 0  # loads last.pt onto the GPU, RNG state on the host
    assert main(["--eval_only", "--checkpoint", str(out), "--data_path", str(tiny), "--device", "cuda", "--quiet",
                 "--output_dir", str(tmp_path / "eval")]) == 0


@CUDA
@pytest.mark.parametrize(("amp", "distill", "progress"),
                         [(False, 0.0, False), (True, 0.0, False), (True, 0.5, False), (True, 0.0, True)])
def test_a_training_step_on_cuda_makes_no_host_sync(tmp_path, amp, distill, progress):
    # the loss sums, the diagnostics and the non-finite record are read once per epoch, the model's
    # presence check is left to the epoch's up-front check, and the progress bar's loss (every 25
    # steps) arrives without a wait: a longer epoch adds no synchronization
    import warnings

    import torch

    from datasets import make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    def syncs(n_train: int) -> int:
        data = make_synthetic(seed=0, n_train=n_train, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
        trainer = Trainer(Config(device="cuda", amp=amp, hidden_dim=16, num_heads=2, batch_size=16, epochs=2,
                                 distill_weight=distill),
                          data, 7, tmp_path / str(n_train), progress=progress)
        trainer.train_epoch()  # the split goes to the card once
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(32 * 16) == syncs(128 * 16)  # 32 and 128 steps: 1 and 5 bar updates


@CUDA
def test_a_split_left_on_the_host_gathers_the_rows_asked_for_and_trains_as_a_resident_one(tmp_path):
    # a split too large for the card stays on the host; its batches were gathered with indices copied
    # back from the GPU without waiting for the copy (rows read from stale memory)
    import torch

    from datasets import SplitTensors, make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=512, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
    host = SplitTensors(data.splits["train"], "cuda", resident=False)
    assert not host.resident and host.tensors["labels"].device.type == "cpu"
    for seed in range(20):
        index = torch.randperm(512, generator=torch.Generator().manual_seed(seed))[:64].cuda()
        busy = torch.randn(4096, 4096, device="cuda")
        busy @ busy  # queued work ahead of the index copy
        batch = host.gather(index)
        assert batch["labels"].device.type == "cuda"
        assert torch.equal(batch["labels"].cpu(), torch.from_numpy(data.splits["train"].labels[index.cpu().numpy()]))
    results = []
    for resident in (True, False):
        cfg = Config(device="cuda", hidden_dim=16, num_heads=2, batch_size=16, epochs=1, train_missing_rate=0.3)
        trainer = Trainer(cfg, data, 7, tmp_path / str(resident), progress=False)
        trainer._train_tensors = SplitTensors(data.splits["train"], trainer.device, resident=resident)
        results.append(trainer.train_epoch())
    assert results[0] == pytest.approx(results[1], rel=1e-4), results


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    """A write that fails half-way keeps the previous file and leaves no temporary file; the
    written files read back as written (``.npz`` keeps its name, text and binary modes)."""
    from training.atomic import atomic_open, write_json, write_npz

    target = tmp_path / "metrics.json"
    write_json({"a": 1}, target)
    with pytest.raises(TypeError):
        write_json({"a": 2, "b": object()}, target)  # json.dump fails after writing part of the file
    assert json.loads(target.read_text()) == {"a": 1}
    write_npz(tmp_path / "p.npz", compressed=True, x=np.arange(3))
    with np.load(tmp_path / "p.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "c.pt", "wb") as fh:
        fh.write(b"partial")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "p.npz"]


def test_ctrl_c_during_a_checkpoint_write_interrupts_once_the_file_is_whole(tmp_path, monkeypatch):
    # was: torch.save interrupted inside a write raised "RuntimeError: [enforce fail at inline_container.cc]
    # unexpected pos" instead of KeyboardInterrupt (a traceback, not "interrupted"), and its half-written
    # archive, collected later, could abort a bench.ablation variant ("terminate called ... write to closed file")
    import io

    import torch

    from training.checkpoint import save_atomic

    class CtrlCOnThirdWrite(io.FileIO):  # Ctrl-C (SIGINT to this process) in the middle of the archive
        writes = 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(b)

    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)
    monkeypatch.setattr("training.atomic.open", lambda p, mode: CtrlCOnThirdWrite(p, mode.replace("b", "")),
                        raising=False)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2, "w": torch.arange(1000.0)}, path)
    ck = torch.load(path, weights_only=True)
    assert ck["epoch"] == 2 and torch.equal(ck["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards


def test_compile_is_refused_where_it_was_not_made_to_work(tiny, tmp_path, capsys):
    from training.config import Config
    from training.errors import ConfigError

    for over in ({"encoder": "cfc"}, {"model": "tfn"}, {"model": "ef_lstm"}):
        with pytest.raises(ConfigError, match="--compile reduce-overhead works with the default model"):
            Config(compile="reduce-overhead", **over).validate()
    Config(compile="default").validate()
    Config(compile="reduce-overhead", encoder="lstm").validate()
    with pytest.raises(SystemExit) as exit_:
        main(tiny_args(tiny, tmp_path / "out", "--compile", "default", "--encoder", "cfc"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "leave --compile out" in err and "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_length_buckets_cut_every_training_batch_to_its_longest_row_and_still_learn(tmp_path, monkeypatch,
                                                                                    encoder):
    from datasets import MODALITIES, make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=100, n_valid=16, n_test=16, seq_len=40, dims=(12, 5, 8))
    cfg = Config(length_buckets=True, encoder=encoder, hidden_dim=16, num_heads=2, batch_size=16, epochs=10,
                 train_missing_rate=0.0, lr=3e-3)
    trainer = Trainer(cfg, data, 7, tmp_path, progress=False)
    seen, longest = [], []
    forward = trainer.model.forward

    def spy(batch):
        lengths = batch["lengths"].cpu().numpy()
        for j, m in enumerate(MODALITIES):  # cut to the longest row: no step is padding in every row
            assert batch[m].shape[1] == lengths[:, j].max(), m
        seen.append(batch["index"].cpu().numpy())
        longest.append(lengths.max())
        return forward(batch)

    monkeypatch.setattr(trainer.model, "forward", spy)
    losses = [trainer.train_epoch()["loss/total"]]
    assert sorted(np.concatenate(seen).tolist()) == list(range(100))  # every row once per epoch
    assert min(longest) < 0.7 * data.splits["train"].features("text").shape[1]  # short batches exist
    monkeypatch.setattr(trainer.model, "forward", forward)
    losses += [trainer.train_epoch()["loss/total"] for _ in range(cfg.epochs - 1)]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.92 * losses[0], losses


def test_length_buckets_resumed_from_last_pt_train_the_same_epochs(tmp_path):
    # the bucketed order draws from the loader's generator, which last.pt saves: a resumed run
    # forms the same batches as one that was never stopped
    import torch

    from datasets import make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=60, n_valid=16, n_test=16, seq_len=20, dims=(12, 5, 8))
    cfg = Config(length_buckets=True, hidden_dim=16, num_heads=2, batch_size=8, epochs=3)

    def epochs(trainer: Trainer, n: int) -> list[float]:
        losses = []
        for _ in range(n):
            losses.append(trainer.train_epoch()["loss/total"])
            trainer.epoch += 1
        return losses

    whole = Trainer(cfg, data, 5, tmp_path / "whole", progress=False)
    expected = epochs(whole, 3)
    first = Trainer(cfg, data, 5, tmp_path / "stopped", progress=False)
    epochs(first, 1)
    first.save_last()
    torch.manual_seed(123)  # the global RNG is restored from last.pt, whatever it holds now
    resumed = Trainer(cfg, data, 5, tmp_path / "stopped", progress=False)
    assert resumed.resume()
    assert epochs(resumed, 2) == expected[1:]
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["mlp", "lstm", "lstm+stacked"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_compiled_training_forward_learns_and_saves_the_plain_model(tmp_path, encoder, device):
    # torch.compile's module shares the parameters: checkpoints hold the plain model's keys, the
    # compiled forward computes the model's function, and training through it lowers the loss
    import torch

    from datasets import SplitTensors, make_synthetic
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=64, n_valid=16, n_test=16, seq_len=6, dims=(12, 5, 8))
    # on CUDA: CUDA graphs and bf16 autocast, the combination that once failed for the LSTM encoder
    cuda = device == "cuda"
    if not cuda:
        need_cpu_compile()
    cfg = Config(compile="reduce-overhead" if cuda else "default", encoder=encoder.split("+")[0], device=device,
                 amp=cuda, stack_lstm=encoder.endswith("+stacked"), hidden_dim=16, num_heads=2, batch_size=16,
                 epochs=8, train_missing_rate=0.0, lr=3e-3)
    trainer = Trainer(cfg, data, 7, tmp_path, progress=False)
    assert trainer.forward is not trainer.model
    torch._dynamo.utils.counters.clear()
    losses = [trainer.train_epoch()["loss/total"] for _ in range(cfg.epochs)]
    breaks = list(torch._dynamo.utils.counters["graph_break"])
    # the LSTM runs, all in one piece (modules.stacked_lstm.run_lstms), are the only graph break
    assert all("run_lstms" in b for b in breaks), breaks
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    trainer.save_last()
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert set(saved) == set(trainer.model.state_dict()) and not any("_orig_mod" in k for k in saved)
    batch = SplitTensors(data.splits["valid"], trainer.device).gather(torch.arange(16))
    trainer.model.eval()
    with torch.no_grad():
        compiled, plain = trainer.forward(batch)["score"], trainer.model(batch)["score"]
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_length_buckets_take_at_most_bucket_levels_shapes_and_learn(tmp_path, monkeypatch, encoder, device):
    # compiled, each full bucketed batch is cut to one of BUCKET_LEVELS fractions of the padded lengths
    # (one CUDA graph each under reduce-overhead), never shorter than its longest row
    import torch

    import training.trainer as trainer_mod
    from datasets import MODALITIES, SplitTensors, make_synthetic
    from datasets.batching import BUCKET_LEVELS
    from training.config import Config
    from training.trainer import Trainer

    data = make_synthetic(seed=0, n_train=100, n_valid=16, n_test=16, seq_len=40, dims=(12, 5, 8))
    cuda = device == "cuda"
    if not cuda:
        need_cpu_compile()
    cfg = Config(compile="reduce-overhead" if cuda else "default", length_buckets=True, encoder=encoder,
                 device=device, amp=cuda, hidden_dim=16, num_heads=2, batch_size=16, epochs=8,
                 train_missing_rate=0.0, lr=3e-3)
    trainer = Trainer(cfg, data, 7, tmp_path, progress=False)
    shapes, cut = set(), trainer_mod.trim_to_longest

    def spy(batch, lengths, levels=0):
        out = cut(batch, lengths, levels)
        for j, m in enumerate(MODALITIES):
            assert lengths[:, j].max() <= out[m].shape[1]
        shapes.add((len(lengths), *(out[m].shape[1] for m in MODALITIES)))
        return out

    monkeypatch.setattr(trainer_mod, "trim_to_longest", spy)
    torch._dynamo.utils.counters.clear()
    losses = [trainer.train_epoch()["loss/total"] for _ in range(cfg.epochs)]
    # the last batch of 4 rows is left at full length: with it, at most BUCKET_LEVELS + 1 shapes
    assert 1 < len(shapes) <= BUCKET_LEVELS and {s[0] for s in shapes} == {16}, shapes
    assert all("run_lstms" in b for b in torch._dynamo.utils.counters["graph_break"])
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.92 * losses[0], losses
    lengths = data.splits["valid"].lengths[:16]
    batch = spy(SplitTensors(data.splits["valid"], trainer.device).gather(torch.arange(16)), lengths, BUCKET_LEVELS)
    trainer.model.eval()
    with torch.no_grad():
        compiled, plain = trainer.forward(batch)["score"], trainer.model(batch)["score"]
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("error", [
    ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"),
    ("RuntimeError", "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 1200000000000 bytes."),
    ("MemoryError", "Unable to allocate 31.0 GiB for an array with shape (16326, 500, 74) and data type float32"),
    ("RuntimeError", "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ("OSError", "[Errno 12] Cannot allocate memory"),
], ids=["cuda", "torch-cpu", "numpy", "cuda-kernel", "cublas", "enomem"])
def test_running_out_of_memory_is_one_line_naming_what_to_shrink(tiny, tmp_path, capsys, monkeypatch, error):
    # was: torch's or numpy's traceback (e.g. --hidden_dim 1000000000, or a batch too large for the GPU)
    import torch

    from training.trainer import Trainer

    kind, message = error

    def full(self):
        if kind == "OSError":
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        raise {"OutOfMemoryError": torch.OutOfMemoryError, "RuntimeError": RuntimeError,
               "MemoryError": MemoryError}[kind](message)

    monkeypatch.setattr(Trainer, "train_epoch", full)
    assert main(tiny_args(tiny, tmp_path / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: out of memory (") and "--batch_size" in err, err
    monkeypatch.setattr(Trainer, "train_epoch", lambda self: 1 / 0)  # any other error is a bug: its traceback
    with pytest.raises(ZeroDivisionError):
        main(tiny_args(tiny, tmp_path / "out2"))

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trainer, "train_epoch", disk_full)  # another OSError is not reported as memory
    with pytest.raises(OSError, match="No space left"):
        main(tiny_args(tiny, tmp_path / "out3"))


def test_a_failing_compilation_is_one_line_naming_the_flag(tiny, tmp_path, capsys, monkeypatch):
    import torch._dynamo.exc

    import training.trainer as trainer_mod

    def broken(model, mode):
        def forward(batch):
            raise torch._dynamo.exc.BackendCompilerFailed(
                "inductor", RuntimeError("Unexpected floating ScalarType in at::autocast::prioritize"), None)
        return forward

    monkeypatch.setattr(trainer_mod.torch, "compile", broken)
    assert main(tiny_args(tiny, tmp_path / "out", "--compile", "reduce-overhead")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "--compile reduce-overhead" in err and "Unexpected floating ScalarType" in err and \
        "run without --compile" in err
    assert "C++ compiler" not in err

    from torch._inductor.exc import CppCompileError

    # what g++ printed for torch 2.11's kernels on an AVX-512 CPU (a compiler that works), and for a
    # machine without Python's headers: the first is torch's bug, the second the machine's
    generated = ("k.cpp: In function 'void kernel(float*)':\nk.cpp:232:150: error: 'tmp5' was not declared in "
                 "this scope; did you mean 'tmp7'?\n  232 |   transpose_mxn(out + 16L*tmp5);"
                 "\nk.cpp:240:1: error: expected '}' at end of input")
    headers = "k.cpp:1:10: fatal error: Python.h: No such file or directory\ncompilation terminated."
    library = "/usr/bin/ld: cannot find -lgomp\ncollect2: error: ld returned 1 exit status"
    machine = ("); on the CPU it builds C++ kernels, which needs a working C++ compiler (g++ or clang++) with Python's "
               "headers")
    cases = [(generated, "error: 'tmp5' was not declared in this scope; did you mean 'tmp7'?); the compiler rejected "
                         "the kernels torch generated", "forward"),
             (headers, "fatal error: Python.h: No such file or directory" + machine, "forward"),
             (library, "cannot find -lgomp" + machine, "forward"),
             # inductor builds the backward's kernels at the first backward (was: torch's whole traceback)
             (generated, "error: 'tmp5' was not declared", "backward")]
    for i, (output, expected, where) in enumerate(cases):
        failure = torch._dynamo.exc.BackendCompilerFailed("inductor", CppCompileError(["g++", "k.cpp"], output), None)

        class FailingBackward(torch.autograd.Function):
            raised = failure

            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                raise FailingBackward.raised

        def failing(model, mode, where=where, failure=failure):
            def forward(batch):
                if where == "forward":
                    raise failure
                out = model(batch)
                return {**out, "score": FailingBackward.apply(out["score"])}
            return forward

        monkeypatch.setattr(trainer_mod.torch, "compile", failing)
        assert main(tiny_args(tiny, tmp_path / f"out{i + 2}", "--compile", "default", "--device", "cpu")) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err and expected in err, err
        assert f"torch.compile failed on the training {where} (CppCompileError: C++ compile error, " in err, err
        assert ("ATEN_CPU_CAPABILITY=default" in err) == (output is generated), err
