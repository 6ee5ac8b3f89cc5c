"""The ablation summary: means over seeds and seed-paired differences from the default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.ablation import summarise, to_markdown
from tests.helpers import need_cpu_compile, tiny_args, tiny_pickle


def write_variant(root: Path, name: str, acc: dict[int, float]) -> None:
    for seed, a in acc.items():
        metrics = {"acc2_non0": a, "f1_non0": a - 0.01, "ece": 0.05}
        split = {"missing_rate": {"0.0": metrics, "0.5": metrics}, "subsets": {"T": metrics}}
        d = root / name / f"seed_{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"valid": split, "test": split}))
    (root / name / "metrics.json").write_text("{}")


def test_paired_differences_and_their_standard_error(tmp_path):
    write_variant(tmp_path, "default", {1: 0.70, 2: 0.74, 3: 0.72})
    write_variant(tmp_path, "other", {1: 0.71, 2: 0.76, 3: 0.72, 4: 0.99})  # seed 4 has no partner
    write_variant(tmp_path, "unfinished", {1: 0.5})
    (tmp_path / "unfinished" / "metrics.json").unlink()
    df = summarise(tmp_path, ["default", "other", "unfinished"]).set_index("variant")
    assert list(df.index) == ["default", "other"]
    diff = np.array([0.01, 0.02, 0.0])
    assert df.loc["other", "d_acc2_rates"] == pytest.approx(diff.mean())
    assert df.loc["other", "d_acc2_rates_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert df.loc["other", "d_valid_f1_rates"] == pytest.approx(diff.mean())
    assert df.loc["other", "acc2_rates"] == pytest.approx(np.mean([0.71, 0.76, 0.72, 0.99]))
    assert df.loc["default", "d_acc2_rates"] == 0.0
    md = to_markdown(df.reset_index())
    assert "| Δ valid F1 rates | Δ Acc-2 rates |" in md and "+1.0 ± 0.6 |" in md
    one = tmp_path / "one_seed"
    write_variant(one, "default", {1: 0.70})
    write_variant(one, "other", {1: 0.72})
    md = to_markdown(summarise(one, ["default", "other"]))
    assert "nan" not in md and "| +2.0 | +2.0 |" in md  # one seed: a difference without a standard error


@pytest.mark.slow
def test_throughput_benchmark_prints_every_model_and_column(capsys):
    from bench.throughput import MODELS, run

    tiny = {"text": (4, 6), "audio": (5, 3), "vision": (3, 2)}
    figs = run(quick=True, device="cpu", n_train=40, shapes={"tiny": tiny})
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "samples/s" in line).split()
    assert header[:3] == ["model", "samples/s", "x"] and "ops/step" in header and "launches/step" in header
    for name in MODELS:
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [name])
        assert len(row) == 8 and float(row[1]) > 0 and float(row[3]) > 0
        assert figs["tiny"][name]["aten_ops"] > 0 and figs["tiny"][name]["launches"] == 0  # no CUDA kernels on the CPU
    assert out.count("tiny shape") == 1


def test_generated_lengths_follow_one_duration_or_are_drawn_per_modality():
    from bench.shapes import make_shaped

    layout = {"text": (10, 3), "audio": (400, 2), "vision": (200, 2)}
    dur = make_shaped(layout, (300, 4, 4), lengths="duration").splits["train"].lengths
    frac = dur / np.array([10, 400, 200])
    assert np.abs(frac[:, 1] - frac[:, 2]).max() <= 1 / 200  # audio and video: one duration, up to rounding
    assert frac.min() >= 0.15 and frac.max() <= 1.0 and frac[:, 1].std() > 0.2
    ind = make_shaped(layout, (300, 4, 4)).splits["train"].lengths
    assert abs(np.corrcoef(ind[:, 1], ind[:, 2])[0, 1]) < 0.2 and ind[:, 1].min() >= 80
    with pytest.raises(ValueError, match="unknown lengths 'sorted'"):
        make_shaped(layout, (3, 3, 3), lengths="sorted")


@pytest.mark.slow
def test_length_buckets_benchmark_prints_both_models_at_both_length_kinds(capsys):
    from bench.length_buckets import run

    tiny = {"text": (4, 6), "audio": (30, 3), "vision": (20, 2)}
    figs = run(quick=True, device="cpu", n_train=40, shapes={"tiny": tiny})
    out = capsys.readouterr().out
    assert set(figs) == {"tiny/independent", "tiny/duration"}
    for kind in ("independent", "duration"):
        assert f"tiny shape, {kind} lengths" in out
        assert all(f["samples_per_s"] > 0 for f in figs[f"tiny/{kind}"].values())
    assert out.count("with --length_buckets") == 4  # quick on the CPU: no compiled pairs


def test_length_buckets_benchmark_also_compiles_both_models_with_duration_lengths(capsys, monkeypatch):
    # the compiled pairs (minutes of compilation on the CPU) come from the same measure() call as the
    # eager ones, so they are side by side; measure is replaced here by one that records its models
    import bench.length_buckets as lb

    asked = {}

    def fake(layout, n_train, dev, reps, models, lengths):
        asked[lengths] = models
        return {name: {"samples_per_s": 100.0 + 10 * ("buckets" in name) + ("compiled" in name)} for name in models}

    monkeypatch.setattr(lb, "measure", fake)
    figs = lb.run(quick=False, device="cpu", n_train=40, shapes={"tiny": {}})
    out = capsys.readouterr().out
    assert set(asked["independent"]) == set(lb.MODELS)
    assert asked["duration"]["lstm+buckets+compiled"] == {"encoder": "lstm", "length_buckets": True,
                                                          "compile": "default"}
    assert set(figs["tiny/duration"]) == set(lb.MODELS) | {f"{n}+compiled" for n in lb.MODELS}
    assert "lstm+compiled:    101.0 samples/s, with --length_buckets    111.0  (1.10x)" in out
    lb.run(quick=True, device="cpu", n_train=40, shapes={"tiny": {}})
    assert set(asked["duration"]) == set(lb.MODELS)  # quick on the CPU: no compilation


def test_bench_json_never_writes_over_a_file_and_is_checked_before_the_run(tmp_path, capsys, monkeypatch):
    import bench.__main__ as cli

    ran = []
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: ran.append(name))  # no benchmark runs
    earlier = tmp_path / "bench.json"
    earlier.write_text("{}")
    for path, message in ((earlier, "already exists"), (tmp_path / "no_such" / "b.json", "cannot write into")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["eval_sweep", "--json", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and message in err[-1] and str(path) in err[-1]
    assert earlier.read_text() == "{}" and not ran


def test_bench_refuses_a_missing_device_in_one_line(capsys):
    import torch

    from bench.__main__ import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --device cuda is valid here")
    assert main(["--device", "cuda", "eval_sweep"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device is available" in err


@pytest.mark.slow  # 5 s
def test_ablation_bad_input_is_one_line_and_makes_no_folder(tmp_path, capsys):
    # was: a traceback from the worker process for a missing --data_path, and ProcessPoolExecutor's
    # for --workers 0
    from bench.ablation import main

    out = tmp_path / "abl"
    for argv, message in ((["--data_path", str(tmp_path / "absent.pkl")], "absent.pkl: no such file or folder"),
                          (["--workers", "0"], "--workers must be >= 1")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--output_dir", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    assert main(["--data_path", str(tmp_path / "bad.pkl"), "--variants", "default", "--workers", "1",
                 "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.pkl" in err[0], err


@pytest.mark.slow
def test_throughput_measures_compile_each_shape_afresh(monkeypatch):
    # measure() runs once per shape (and per benchmark) in one process; torch keeps a bounded number
    # of graphs per function (8) and runs it uncompiled beyond, which would be timed as "compiled"
    import torch

    from bench.throughput import measure

    need_cpu_compile()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)  # reached at the second shape
    new_graphs = []
    for layout in ({"text": (4, 6), "audio": (8, 3), "vision": (6, 2)},
                   {"text": (5, 7), "audio": (9, 4), "vision": (7, 3)}):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        measure(layout, 32, torch.device("cpu"), 1, {"compiled": {"compile": "default", "hidden_dim": 16,
                                                                   "num_heads": 2}})
        new_graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
    assert all(n >= 1 for n in new_graphs), new_graphs


def finished_variant(root: Path, name: str, **settings) -> dict:
    """A finished variant folder (config.json, metrics.json with its config, one seed's results) run with
    the ablation's defaults plus ``settings``."""
    from training.config import Config

    write_variant(root, name, {1: 0.7})
    cfg = Config(**{"eval_frame_missing_rates": [0.0], "seeds": [1], "quiet": True, "tensorboard": False,
                    "resume": True, "output_dir": str(root / name), **settings}).to_dict()
    (root / name / "config.json").write_text(json.dumps(cfg))
    (root / name / "metrics.json").write_text(json.dumps({"config": cfg}))
    return {f.name: f.read_bytes() for f in (root / name).rglob("*") if f.is_file()}


def test_ablation_reuses_a_finished_variant_only_when_its_settings_match(tmp_path, capsys, monkeypatch):
    # was: a variant folder holding metrics.json was reused whatever the new flags, and the old
    # results printed as the new study's (status 0). Reusing starts no process
    from bench import ablation
    from bench.ablation import main

    monkeypatch.setattr(ablation, "ProcessPoolExecutor", None)  # calling it would raise

    a, b = tiny_pickle(tmp_path / "a.pkl"), tiny_pickle(tmp_path / "b.pkl", seed=1)
    root = tmp_path / "abl"
    before = finished_variant(root, "default", data_path=str(a), epochs=1)
    flags = ["--variants", "default", "--seeds", "1", "--epochs", "1", "--workers", "1", "--output_dir", str(root)]
    for changed in (["--data_path", str(b)], ["--data_path", str(a), "--epochs", "2"], [],
                    ["--data_path", str(a), "--seeds", "2"]):  # a seed left out: was refused only in a worker
        assert main([*flags, *changed]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(root / "default") in err[0], err
        assert "data_path" in err[0] or "epochs 1 -> 2" in err[0] or "seeds [1] -> [2]" in err[0], err
        assert "--overwrite" in err[0] and "--output_dir" in err[0], err
    assert {f.name: f.read_bytes() for f in (root / "default").rglob("*") if f.is_file()} == before
    assert main([*flags, "--data_path", str(a)]) == 0  # the same settings: reused, not trained again
    captured = capsys.readouterr()
    assert "| default |" in captured.out and (root / "ablation.md").exists()
    assert "reused default (finished with these settings)" in captured.err
    assert {f.name: f.read_bytes() for f in (root / "default").rglob("*") if f.is_file()} == before


def test_ablation_output_dir_that_cannot_hold_the_study_is_one_line(tmp_path, capsys, monkeypatch):
    # was: a FileExistsError / OSError traceback from mkdir
    import errno

    from bench.ablation import main

    data = tiny_pickle(tmp_path / "a.pkl")
    flags = ["--data_path", str(data), "--variants", "default", "--workers", "1"]
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main([*flags, "--output_dir", str(afile)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--output_dir {afile} is a file; choose a folder" in err[0], err
    assert afile.read_text() == "keep"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main([*flags, "--output_dir", str(tmp_path / "ro" / "abl")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write ") and "Read-only" in err[0], err
    assert "choose an --output_dir you can write to" in err[0]


@pytest.mark.slow
def test_probability_refuses_more_folds_than_the_validation_split_has_videos(tmp_path, capsys, one_thread):
    # was: an IndexError traceback (an empty fold) for --folds beyond the validation videos
    from bench.probability import main
    from training.cli import main as train_main

    data = tiny_pickle(tmp_path / "tiny.pkl", n=(32, 2, 16))  # two validation videos
    run = tmp_path / "run"
    assert train_main(tiny_args(data, run, "--model", "lf_dnn", "--epochs", "1")) == 0
    capsys.readouterr()
    for folds in ([], ["--folds", "100000"]):
        assert main([str(run), *folds]) == 1
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --folds ") and "holds 2 videos" in err[0], err
        assert "allows --folds 2 to 2" in err[0] and not captured.out
    assert main([str(run), "--folds", "2"]) == 0
    assert "valid, 2-fold CV by video" in capsys.readouterr().out


@pytest.mark.slow
def test_ablation_overwrite_trains_a_variant_run_with_other_settings_afresh(tmp_path, capsys):
    from bench.ablation import main

    a, b = tiny_pickle(tmp_path / "a.pkl", n=(32, 16, 16)), tiny_pickle(tmp_path / "b.pkl", n=(32, 16, 16))
    root = tmp_path / "abl"
    finished_variant(root, "default", data_path=str(a), epochs=1, hidden_dim=16, num_heads=2)
    flags = ["--variants", "default", "--seeds", "1", "--epochs", "1", "--hidden_dim", "16", "--num_heads", "2",
             "--workers", "1", "--data_path", str(b), "--output_dir", str(root)]
    assert main([*flags, "--overwrite"]) == 0
    saved = json.loads((root / "default" / "metrics.json").read_text())["config"]
    assert saved["data_path"] == str(b) and (root / "default" / "seed_1" / "best.pt").exists()
    capsys.readouterr()
    assert main(flags) == 0  # now the settings match: reused
    assert "| default |" in capsys.readouterr().out


@pytest.mark.slow
def test_ablation_spawns_its_variants_so_they_can_use_cuda(tmp_path, monkeypatch, capsys):
    # was (the suite on an H200): a variant forked from a process that had asked about CUDA failed with
    # "Cannot re-initialize CUDA in forked subprocess". A forked child here would inherit run_experiment
    # raising that error; a spawned one imports the real one
    from bench.ablation import main

    def forked(cfg):
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")

    monkeypatch.setattr("training.run.run_experiment", forked)
    data = tiny_pickle(tmp_path / "a.pkl", n=(32, 16, 16))
    root = tmp_path / "abl"
    assert main(["--variants", "default", "--seeds", "1", "--epochs", "1", "--hidden_dim", "16", "--num_heads", "2",
                 "--workers", "1", "--data_path", str(data), "--output_dir", str(root)]) == 0
    assert (root / "default" / "seed_1" / "best.pt").exists() and "| default |" in capsys.readouterr().out


@pytest.mark.slow
def test_ablation_ctrl_c_stops_the_running_variants_and_starts_no_other(tmp_path):
    # was: the interrupted variants stopped, but every queued one still ran (the process pool's
    # queue, then its shutdown waited for it): Ctrl-C on a study took as long as the rest of it
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    data, out = tiny_pickle(tmp_path / "a.pkl", n=(32, 16, 16)), tmp_path / "abl"
    cmd = [sys.executable, "-m", "bench.ablation", "--data_path", str(data), "--variants", "default", "no_vae_loss",
           "--seeds", "1", "--epochs", "1000", "--patience", "1000", "--hidden_dim", "16", "--num_heads", "2",
           "--workers", "1", "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "default" / "seed_1" / "last.pt").exists():
            time.sleep(0.1)
        assert proc.poll() is None, "the study ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert (out / "default" / "seed_1" / "last.pt").exists()  # kept: --resume continues it
    assert not (out / "no_vae_loss").exists()


def test_ablation_resumes_a_finished_variant_given_more_seeds(tmp_path, monkeypatch):
    # was: a finished variant was reused with its old seeds, whatever --seeds said
    from bench import ablation

    root = tmp_path / "abl"
    finished_variant(root, "default")
    ran = []
    monkeypatch.setattr("training.run.run_experiment", lambda cfg: ran.append(cfg.seeds))
    base = {"eval_frame_missing_rates": [0.0], "quiet": True, "tensorboard": False, "resume": True}
    for seeds in ([1], [1, 2]):
        ablation._run_variant(("default", {**base, "seeds": seeds}, {"output_dir": str(root / "default")}))
    assert ran == [[1, 2]]
