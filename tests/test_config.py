"""The configuration: field metadata and the lists derived from it, --config files, the command
line's errors and help, the environment mapping of train_v4.sh, per-run folders."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from training import config as C
from training.config import Config, config_from_args, config_to_argv, env_args, new_run_dir


def test_every_field_carries_its_group_and_kinds():
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in C.GROUPS, f.name
        assert f.metadata["kind"] <= set(C.KINDS), f.name
    assert set(C.fields_in(*C.GROUPS)) == {f.name for f in dataclasses.fields(Config)}
    with pytest.raises(KeyError):
        C.fields_with("searchable")


def test_derived_lists_are_consistent_and_fix_the_old_drift():
    assert "device" in C.NOT_SEARCHABLE and "amp" in C.NOT_SEARCHABLE  # both say how it runs
    assert "standardize" in C.SWITCHES and "standardize" not in C.RESUMABLE_CHANGES  # it shapes the data
    assert C.RESUMABLE_CHANGES == {"resume", "overwrite", "quiet", "tensorboard", "device", "amp", "compile",
                                   "stack_lstm", "seeds", "output_dir"}
    assert set(C.RUN_FIELDS) <= C.RESUMABLE_CHANGES and set(C.RUN_FIELDS) <= C.NOT_SEARCHABLE
    for switch, params in C.FEATURE_PARAMS.items():
        assert switch in C.SWITCHES and set(params) <= set(C.SEARCHABLE), switch
    assert C.FEATURE_PARAMS["use_vae"][:2] == ("vae_weight", "kl_weight")
    assert set(C.FEATURE_PARAMS["use_contrastive"]) == {"contrastive_weight", "contrastive_temperature"}
    # nothing that names the data, the seeds or the run folder can be searched
    assert {"dataset", "data_path", "seeds", "output_dir", "eval_missing_rates", "model"} <= C.NOT_SEARCHABLE
    assert set(C.SEARCHABLE) | C.NOT_SEARCHABLE == {f.name for f in dataclasses.fields(Config)}


def test_a_field_without_a_group_is_refused_at_definition():
    with pytest.raises(TypeError, match="group="):
        @dataclasses.dataclass
        class Broken:
            x: int = C._f(1, "no group")

        C._check_fields(Broken)


def test_config_file_sets_values_and_flags_win(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("hidden_dim: 64\nlr: 3e-4\nuse_vae: false\nseeds: [1, 2]\nencoder: lstm\ndata_path: null\n")
    cfg = config_from_args(["--config", str(path), "--hidden_dim", "32"])
    assert (cfg.hidden_dim, cfg.lr, cfg.use_vae, cfg.seeds, cfg.encoder) == (32, 3e-4, False, [1, 2], "lstm")
    assert config_from_args(["--config", str(path), "--use_vae"]).use_vae is True
    js = tmp_path / "exp.json"
    js.write_text(json.dumps({"dropout": 0.1, "eval_missing_rates": 0.5}))
    cfg = config_from_args(["--config", str(js)])
    assert (cfg.dropout, cfg.eval_missing_rates) == (0.1, [0.5])
    # a run's own config.json is a valid --config file
    saved = tmp_path / "config.json"
    C.save_config(dataclasses.replace(Config(), hidden_dim=48, num_heads=3, output_dir="x"), str(saved))
    assert config_from_args(["--config", str(saved)]) == dataclasses.replace(Config(), hidden_dim=48, num_heads=3,
                                                                             output_dir="x")


@pytest.mark.parametrize("text, fragments", [
    ("hidden_dimm: 64\n", ["unknown key 'hidden_dimm'", "did you mean hidden_dim"]),
    ("hidden_dim: big\n", ["hidden_dim", "expected an integer"]),
    ("hidden_dim: 1.5\n", ["hidden_dim", "expected an integer"]),
    ("encoder: gru\n", ["encoder", "expected one of mlp, lstm"]),
    ("use_vae: 3\n", ["use_vae", "expected true or false"]),
    ("dropout: 1.5\n", ["dropout must lie in [0, 1)", "(set in"]),
    ("- a list\n", ["must hold a mapping"]),
    ("hidden_dim: [1\n", ["not valid YAML/JSON"]),
    # YAML and JSON parsers keep the last of two equal keys without a word
    ("lr: 0.001\nepochs: 3\nlr: 0.1\n", ["key 'lr' appears twice (lines 1 and 3); keep one"]),
    ("eval_missing_rates: [0.1]\nx: {a: 1, a: 2}\n", ["key 'a' appears twice (line 2)"]),  # in any mapping
])
def test_config_file_errors_are_one_line_naming_the_key_and_the_file(tmp_path, capsys, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--config", str(path)], prog="prog")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and str(path) in err, err
    assert err.startswith("prog: error: ") and err.rstrip().endswith("(see --help)"), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("text, fragment", [
    ('# a YAML comment\n{"dropout": 0.1}\n', " is not valid JSON (its .json name makes it read as JSON): "),
    ('{"dropout": 0.1, "epochs": 2, "dropout": 0.4}', ": key 'dropout' appears twice; keep one"),
])
def test_json_config_file_errors(tmp_path, capsys, text, fragment):
    path = tmp_path / "exp.json"
    path.write_text(text)
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config file {path}{fragment}" in err, err


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(tmp_path / "absent.yaml")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read config file" in err and "absent.yaml" in err


def test_argparse_errors_are_one_line(capsys):
    for argv in (["--not_a_flag"], ["--epochs", "two"], ["--encoder", "gru"], ["--dropout", "1.5"],
                 ["--resume"]):
        with pytest.raises(SystemExit) as exc:
            config_from_args(argv, prog="prog")
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, (argv, err)
        assert err.startswith("prog: error: ") and err.rstrip().endswith("(see --help)"), (argv, err)


@pytest.mark.parametrize("field, value, message", [
    ("kl_weight", float("nan"), "kl_weight must be a finite number, got nan"),  # was: NaN loss at step 1
    ("fusion_temperature", float("inf"), "fusion_temperature must be a finite number"),  # was: ran, uniform fusion
    ("eval_missing_rates", [0.0, float("nan")], "eval_missing_rates must be a finite number"),
    ("seeds", [1, -1], "seeds must lie in 0 .. 2**64 - 1"),  # was: numpy's traceback
    ("seeds", [2**64], "seeds must lie in 0 .. 2**64 - 1"),
    ("synthetic_seed", -5, "synthetic_seed must lie in"),  # was: numpy's traceback
    ("warmup_epochs", -1, "warmup_epochs must be >= 0"),  # was: accepted (it shifted the cosine schedule)
    ("kl_warmup_epochs", -1, "kl_warmup_epochs must be >= 0"),
    ("num_classes", 5, "num_classes must be one of 2, 3, 7, got 5"),  # Python API / tune: no argparse choices
    ("encoder", "gru", "encoder must be one of mlp, lstm, cfc"),
])
def test_validate_refuses_what_the_fields_types_and_choices_exclude(field, value, message):
    from training.config import Config
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**{field: value}).validate()


def test_settings_earlier_versions_trained_with_still_load_from_their_runs():
    # config.json and checkpoints of runs started before those values were refused: --resume and
    # --eval_only must still read them, unchanged
    from training.config import Config
    from training.errors import ConfigError

    old = {"warmup_epochs": -1, "kl_warmup_epochs": -2, "fusion_temperature": float("inf")}
    saved = json.loads(json.dumps(Config(**old).to_dict()))  # as written in config.json (Infinity)
    cfg = Config.from_dict(saved)
    assert (cfg.warmup_epochs, cfg.kl_warmup_epochs, cfg.fusion_temperature) == (-1, -2, float("inf"))
    with pytest.raises(ConfigError, match="unknown config keys: hidden"):
        Config.from_dict({**saved, "hidden": 3})
    with pytest.raises(ConfigError, match="hidden_dim must be > 0"):  # every other check still applies
        Config.from_dict({**saved, "hidden_dim": 0})


def test_bad_numbers_on_the_command_line_are_one_line_before_any_folder(tmp_path, capsys):
    from training.cli import main

    for flag, value in (("--seeds", "-1"), ("--lr", "inf"), ("--tta_lr", "nan")):
        with pytest.raises(SystemExit) as exc:
            main([flag, value, "--output_dir", str(tmp_path / "run")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and flag[2:] in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("parse", ["cli", "tune"])
def test_threads_lie_between_0_and_the_cores(capsys, parse):
    # --threads 99999 once ended in a traceback (allocating the threads ran out of memory)
    import tune
    from training.cli import parse_command_line

    cores = os.cpu_count() or 1
    run = (lambda n: parse_command_line(["--threads", str(n)], "prog")[2]) if parse == "cli" else \
        (lambda n: tune.parse_args(["--threads", str(n)])[0].threads)
    assert run(cores) == cores and run(0) == 0
    for n in (-1, cores + 1, 99999):
        with pytest.raises(SystemExit) as exc:
            run(n)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and f"--threads must lie in 0..{cores}" in err[-1], err


def test_help_has_one_section_per_group_and_no_default_on_no_flags():
    text = C.build_parser(prog="prog").format_help()
    for title in C.GROUPS.values():
        assert f"\n{title}:\n" in text, title
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "turn off --use_vae\n" in text
    assert text.index("\ndata:\n") < text.index("--data_path") < text.index("\nmodel:\n") < text.index("--hidden_dim")


def test_config_argv_round_trip_spells_out_every_switch():
    cfg = dataclasses.replace(Config(), hidden_dim=64, standardize=False, amp=True, quiet=True, output_dir="o")
    argv = config_to_argv(cfg)
    assert config_from_args(argv) == cfg
    for name in C.SWITCHES:
        value = getattr(cfg, name)
        assert (f"--{name}" if value is True else f"--no_{name}" if value is False else f"--{name}") in argv, name
    assert "--no_standardize" in argv and "--amp" in argv
    assert "--no_tensorboard" not in argv and "--tensorboard" not in argv  # a run flag left at its default


def test_env_args_map_every_field():
    env = {"HIDDEN_DIM": "64", "CONTRASTIVE_TEMP": "0.2", "SEEDS": "1 2", "USE_VAE": "0", "STANDARDIZE": "off",
           "CALIBRATE": "yes", "EVAL_MISSING_RATES": "0.0 0.5", "DATA_PATH": "a b/c.pkl", "LR": "", "PATH": "/bin"}
    argv = env_args(env)
    cfg = config_from_args(argv)
    assert (cfg.hidden_dim, cfg.contrastive_temperature, cfg.seeds, cfg.use_vae, cfg.standardize, cfg.calibrate,
            cfg.eval_missing_rates, cfg.data_path, cfg.lr) == (64, 0.2, [1, 2], False, False, True, [0.0, 0.5],
                                                               "a b/c.pkl", Config().lr)
    every = {name.upper(): "1" if isinstance(getattr(Config(), name), bool) else "7"
             for name in (f.name for f in dataclasses.fields(Config))}
    flags = {a.removeprefix("--").removeprefix("no_") for a in env_args(every) if a.startswith("--")}
    assert flags == {f.name for f in dataclasses.fields(Config)}
    with pytest.raises(ValueError, match=r"^train_v4.sh: use_aecf must be 1 or 0, got 'maybe'$"):
        env_args({"USE_AECF": "maybe"})


def test_env_args_command_does_not_import_torch():
    # train_v4.sh runs `python -m training.config --env-args` before every training run: it must stay cheap
    code = ("import runpy, sys; sys.argv = ['training.config', '--env-args']\n"
            "try:\n    runpy.run_module('training.config', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HIDDEN_DIM": "64"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "--hidden_dim 64" and lines[-1] == "False False", done.stdout


def test_each_run_gets_its_own_folder_and_latest_points_at_it(tmp_path):
    root = tmp_path / "runs"
    cfg = dataclasses.replace(Config(), data_path=str(tmp_path / "mosi_dev.pkl"), model="tfn")
    first, second = new_run_dir(cfg, str(root)), new_run_dir(cfg, str(root))
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    assert Path(first).name.startswith("tfn_mosi_dev_") and Path(second).name.startswith(Path(first).name)
    assert (root / "latest").resolve() == Path(second).resolve()
    assert Path(new_run_dir(Config(), str(root))).name.startswith("attention_robust_v4_synthetic_")
    (root / "latest").unlink()
    (root / "latest").mkdir()  # a real folder named latest is never replaced
    new_run_dir(cfg, str(root))
    assert (root / "latest").is_dir() and not (root / "latest").is_symlink()


def _fake_python(tmp_path: Path) -> Path:
    """A PYTHON for train_v4.sh that runs the config module but prints its cwd and argv for the run."""
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -m ]; then exec {sys.executable} "$@"; fi\npwd\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.slow
def test_train_v4_sh_runs_in_the_callers_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(_fake_python(tmp_path)), DATA_PATH="data/x.pkl", HIDDEN_DIM="64", CONTRASTIVE_TEMP="0.2")
    r = subprocess.run(["bash", str(ROOT / "train_v4.sh"), "--output_dir", "out"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cwd, script, *argv = r.stdout.splitlines()
    assert Path(cwd).resolve() == tmp_path.resolve() and script == str(ROOT / "attention_robust_v4.py")
    assert argv == ["--data_path", "data/x.pkl", "--hidden_dim", "64", "--contrastive_temperature", "0.2",
                    "--output_dir", "out"]


def test_train_v4_sh_takes_config_and_threads_from_the_environment_too(tmp_path):
    # was: both dropped without a word, and with CONFIG the embedded data's 6-epoch default came in
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(_fake_python(tmp_path)), CONFIG="exp.yaml", THREADS="2")
    r = subprocess.run(["bash", str(ROOT / "train_v4.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2:] == ["--config", "exp.yaml", "--threads", "2"]
    # variables of such generic names may be set for another tool: the run names what it took
    assert r.stderr.strip() == "train_v4.sh: from the environment: --config exp.yaml --threads 2"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": env["PYTHON"]}  # no variable of the CLI's
    r = subprocess.run(["bash", str(ROOT / "train_v4.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.splitlines()[2:] == ["--epochs", "6"], r.stderr
