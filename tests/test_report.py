"""``python -m report``: the comparison table equals the runs' metrics, best marks, AUILC, errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from report import auilc, compare
from report.__main__ import main as report_main
from report.tables import format_table
from tests.conftest import ROOT
from tests.helpers import tiny_args, tiny_pickle
from training.cli import main as train_main
from training.config import Config
from training.metrics import METRIC_NAMES, sentiment_metrics

RATES = ["0.0", "0.1", "0.3", "0.5"]
SUBSETS = ["T", "A", "V", "TA", "TV", "AV", "TAV"]


def fake_metrics(path: Path, seed: int, rates: list[str] = RATES, model: str = "lf_dnn") -> dict:
    rng = np.random.default_rng(seed)
    block = lambda keys: {k: {m: float(rng.uniform(0.5, 0.9)) for m in METRIC_NAMES} for k in keys}
    m = {"config": {"model": model, "seeds": [1, 2, 3]}, "seeds": [1, 2, 3],
         "results": {"missing_rate": block(rates), "subsets": block(SUBSETS), "frame_missing_rate": block(rates)},
         "std": {"missing_rate": block(rates), "subsets": block(SUBSETS), "frame_missing_rate": block(rates)},
         "train_seconds": 1.0}
    for section in ("missing_rate", "subsets"):  # stds are small
        for vals in m["std"][section].values():
            for k in vals:
                vals[k] /= 20
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(m))
    return m


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    data = tiny_pickle(root / "tiny.pkl")
    out = root / "lf_dnn"
    assert train_main(tiny_args(data, out, "--model", "lf_dnn")) == 0
    return out


def test_auilc_is_a_normalised_trapezoid():
    assert auilc(["0.0", "0.5"], [0.8, 0.6]) == pytest.approx(0.7)
    assert auilc(["0.0", "0.1", "0.3"], [0.9, 0.7, 0.7]) == pytest.approx((0.1 * 0.8 + 0.2 * 0.7) / 0.3)
    assert auilc(["0.2"], [0.65]) == pytest.approx(0.65)


@pytest.mark.slow
def test_table_equals_the_runs_metrics(tmp_path, real_run):
    runs = {name: fake_metrics(tmp_path / name, seed) for seed, name in enumerate(["a", "b"])}
    runs["real"] = json.loads((real_run / "metrics.json").read_text())  # rates 0.0 0.3 0.5
    paths = [tmp_path / "a", tmp_path / "b", real_run]
    with pytest.warns(UserWarning, match="0.1"):
        res = compare(paths, tmp_path / "cmp", names=["a", "b", "real"])
    out = tmp_path / "cmp"
    for f in ("comparison.md", "comparison.csv", "comparison.png", "comparison.json"):
        assert (out / f).stat().st_size > 0
    df = pd.read_csv(out / "comparison.csv", dtype={"key": str})
    common = ["0.0", "0.3", "0.5"]
    assert sorted(df[df.section == "missing_rate"]["key"].unique()) == common
    for name, m in runs.items():
        for section, keys in (("missing_rate", common), ("subsets", SUBSETS)):
            for key in keys:
                for metric in ("acc2_non0", "f1_non0"):
                    row = df[(df.run == name) & (df.section == section) & (df.metric == metric) & (df.key == key)]
                    assert len(row) == 1
                    assert row["mean"].iloc[0] == pytest.approx(m["results"][section][key][metric], abs=1e-12)
                    assert row["std"].iloc[0] == pytest.approx(m["std"][section][key][metric], abs=1e-12)
        want = auilc(common, [m["results"]["missing_rate"][k]["acc2_non0"] for k in common])
        got = df[(df.run == name) & (df.section == "auilc") & (df.metric == "acc2_non0")]["mean"].iloc[0]
        assert got == pytest.approx(want)
        assert [r for r in res["summary"]["runs"] if r["name"] == name][0]["auilc"]["acc2_non0"] == pytest.approx(want)
    # the best flag marks the maximum of every column, and the Markdown shows it in bold
    for _, col in df.groupby(["section", "key", "metric"]):
        assert col["best"].tolist() == (col["mean"] == col["mean"].max()).tolist()
    md = (out / "comparison.md").read_text()
    best = df[(df.section == "missing_rate") & (df.metric == "acc2_non0") & (df.key == "0.0") & df.best].iloc[0]
    n_seeds = len(runs[best["run"]]["seeds"])
    spread = f" ± {100 * best['std']:.1f}" if n_seeds > 1 else ""
    assert f"**{100 * best['mean']:.1f}{spread}**" in md
    real_cell = f"{100 * runs['real']['results']['subsets']['TV']['f1_non0']:.1f}"
    assert real_cell in md
    assert json.loads((out / "comparison.json").read_text())["rates"] == [0.0, 0.3, 0.5]


def test_cli_writes_and_names(tmp_path, capsys):
    for seed, name in enumerate(["x", "y", "z"]):
        fake_metrics(tmp_path / name, seed)
    assert report_main([str(tmp_path / n) for n in "xyz"] + ["--output", str(tmp_path / "o"),
                                                              "--names", "X", "Y", "Z"]) == 0
    assert "| X |" in capsys.readouterr().out
    assert {r["name"] for r in json.loads((tmp_path / "o" / "comparison.json").read_text())["runs"]} == set("XYZ")


def test_a_comparison_is_replaced_only_with_overwrite_and_a_run_counts_once(tmp_path, capsys):
    for seed, name in enumerate("xy"):
        fake_metrics(tmp_path / name, seed)
    old = fake_metrics(tmp_path / "old", 2)  # from before the probability scores: no probability table
    for block in (b for sec in ("results", "std") for b in old[sec].values()):
        for vals in block.values():
            for k in [k for k in vals if k.startswith(("brier", "nll", "ece"))]:
                del vals[k]
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(old))
    x, y, out = str(tmp_path / "x"), str(tmp_path / "y"), tmp_path / "o"
    assert report_main([x, y, "--output", str(out)]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert "comparison_probability.csv" in before
    capsys.readouterr()
    assert report_main([x, str(tmp_path / "old"), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a comparison" in err[0] and "--overwrite" in err[0]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # untouched
    assert report_main([x, str(tmp_path / "old"), "--output", str(out), "--overwrite"]) == 0
    assert "| old |" in (out / "comparison.md").read_text() and not (out / "comparison_probability.csv").exists()
    (tmp_path / "latest").symlink_to(tmp_path / "x")
    for same in (str(tmp_path / "latest"), f"{x}/metrics.json"):
        assert report_main([x, same, "--output", str(tmp_path / "o2")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "are the same run; give each run once" in err[0], err
    assert not (tmp_path / "o2").exists()
    (tmp_path / "y" / "metrics.json").rename(tmp_path / "x" / "other.json")  # two metrics files in one folder
    assert report_main([f"{x}/metrics.json", f"{x}/other.json", "--output", str(tmp_path / "o3")]) == 0


def test_runs_with_colliding_names_get_unique_ones_and_repeated_names_are_refused(tmp_path, capsys):
    # was: x_2, x, x -> x_2, x, x_2: a TypeError after comparison.csv was written, so the rerun needed
    # --overwrite
    paths = [tmp_path / "p" / "x_2", tmp_path / "q" / "p" / "x", tmp_path / "q" / "q" / "x"]
    for seed, p in enumerate(paths):
        fake_metrics(p, seed)
    out = tmp_path / "cmp"
    assert report_main([*map(str, paths), "--output", str(out)]) == 0
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["x_2", "x", "x_3"]
    assert [r["path"] for r in runs] == list(map(str, paths))
    capsys.readouterr()
    for names, message in ((["x_2", "x", "x"], "--names gives 'x' twice"), (["a", "", "b"], "an empty name")):
        assert report_main([*map(str, paths), "--output", str(tmp_path / "cmp2"), "--names", *names]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "give each run its own name" in err[0], err
    assert not (tmp_path / "cmp2").exists()


def test_an_output_or_run_path_of_the_wrong_kind_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    # was: "[Errno 17] File exists", "[Errno 30] ...", "[Errno 21] Is a directory" without the flag or
    # what to do, and an empty --output wrote into the current folder ("wrote /comparison.md")
    import errno

    fake_metrics(tmp_path / "ok", 0)
    (tmp_path / "dirm" / "metrics.json").mkdir(parents=True)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    monkeypatch.chdir(tmp_path / "dirm")
    ok = str(tmp_path / "ok")
    cases = [([ok, "--output", str(afile)], f"--output {afile} is a file; choose a folder"),
             ([ok, "--output", ""], "--output is empty"),
             ([ok, str(tmp_path / "dirm"), "--output", str(tmp_path / "o")],
              f"{tmp_path / 'dirm' / 'metrics.json'} is a folder, not a metrics file")]
    for argv, message in cases:
        assert report_main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert afile.read_text() == "keep" and not (tmp_path / "o").exists()
    assert [f.name for f in (tmp_path / "dirm").iterdir()] == ["metrics.json"]

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert report_main([ok, "--output", str(tmp_path / "ro")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write {tmp_path / 'ro'}: Read-only file system" in err[0], err
    assert "choose an --output you can write to" in err[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "report", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_errors_are_one_line(tmp_path, capsys):
    fake_metrics(tmp_path / "ok", 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    (tmp_path / "nokey").mkdir()
    (tmp_path / "nokey" / "metrics.json").write_text(json.dumps({"results": {"missing_rate": {"0.0": {}}},
                                                                 "std": {}}))
    fake_metrics(tmp_path / "other", 1, rates=["0.2", "0.4"])
    cases = {"empty": "no metrics.json", "bad": "not valid JSON", "nokey": "malformed",
             "other": "share no missing rate"}
    for folder, message in cases.items():
        code = report_main([str(tmp_path / "ok"), str(tmp_path / folder), "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (folder, err)
    assert report_main([str(tmp_path / "ok"), "--output", str(tmp_path / "o"), "--names", "a", "b"]) == 1
    assert "--names" in capsys.readouterr().err
    # malformed in ways that raised a TypeError or KeyError, or were read wrongly ("1111": 4 seeds)
    good = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    broken = {"seeds_int": ({"seeds": 5}, "'seeds' is 5"), "seeds_text": ({"seeds": "1111"}, "'seeds' is '1111'"),
              "data_n": ({"data": {"n": [1, 2]}}, None),
              "no_std_brier": ({}, None),
              "ens_nan": ({"ensemble": {"missing_rate": {k: dict(v, acc2_non0=float("nan"))
                                                         for k, v in good["results"]["missing_rate"].items()},
                                        "subsets": {}}}, "ensemble.missing_rate.0.0.acc2_non0 is nan"),
              "ens_empty": ({"ensemble": {"missing_rate": {}, "subsets": {}}}, "ensemble.'missing_rate' is empty")}
    for folder, (change, message) in broken.items():
        m = {**json.loads(json.dumps(good)), **change}
        if folder == "no_std_brier":  # the results give Brier, the std does not
            for vals in m["std"]["missing_rate"].values():
                del vals["brier"]
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(m))
        code = report_main([str(tmp_path / "ok"), str(tmp_path / folder), "--output", str(tmp_path / f"o_{folder}")])
        err = capsys.readouterr().err
        if message is None:  # read as unknown (a data count) or shown without ± (an std): compared
            assert code == 0 and "Traceback" not in err, (folder, err)
        else:
            assert code == 1 and message in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    r = run_cli(str(tmp_path / "ok"), str(tmp_path / "empty"), "--output", str(tmp_path / "o"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")


# ---- exact rate keys, Acc-5, sample counts and ids, data warnings (issue 12, items 4 and 17) --------

CLOSE_RATES = ["0.0", "0.01", "0.25", "0.3", "0.35"]


@pytest.fixture(scope="module")
def close_rates_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("close")
    data = tiny_pickle(root / "tiny.pkl")
    out = root / "run"
    assert train_main(tiny_args(data, out, "--model", "lf_dnn", "--eval_missing_rates", *CLOSE_RATES,
                                "--eval_frame_missing_rates", "0.0", "0.01", "0.25")) == 0
    return out


@pytest.mark.slow
def test_close_rates_keep_their_own_keys_everywhere(close_rates_run, tmp_path):
    m = json.loads((close_rates_run / "metrics.json").read_text())
    assert list(m["results"]["missing_rate"]) == CLOSE_RATES  # were 0.0, 0.0, 0.2, 0.3, 0.3 -> 3 keys
    assert list(m["std"]["missing_rate"]) == CLOSE_RATES
    assert list(m["results"]["frame_missing_rate"]) == ["0.0", "0.01", "0.25"]
    z = np.load(close_rates_run / "predictions.npz")
    y = z["labels"].astype(np.float64)
    for i, key in enumerate(CLOSE_RATES):  # each key holds the metrics of its own rate's predictions
        assert z["rates"][i] == pytest.approx(float(key))
        want = sentiment_metrics(z["preds"][0, i], y, z["probs"][0, i])
        assert m["results"]["missing_rate"][key]["acc2_non0"] == pytest.approx(want["acc2_non0"], abs=1e-6)
    df = pd.read_csv(close_rates_run / "results.csv", dtype={"key": str})
    assert df[df.section == "missing_rate"]["key"].tolist() == CLOSE_RATES
    table = format_table(m["results"], m["std"], 1)
    for key in CLOSE_RATES:
        assert any(line.split()[:1] == [key] for line in table.splitlines()), key
    res = compare([close_rates_run], tmp_path / "cmp")
    assert all(f"p={k}" in res["table"] for k in CLOSE_RATES)


def test_duplicate_rates_are_refused():
    for field in ("eval_missing_rates", "eval_frame_missing_rates"):
        with pytest.raises(ValueError, match=f"{field} lists a rate twice"):
            Config(**{field: [0.0, 0.3, 0.3]}).validate()


@pytest.mark.slow
def test_acc5_counts_and_ids(close_rates_run, tmp_path):
    m = json.loads((close_rates_run / "metrics.json").read_text())
    z = np.load(close_rates_run / "predictions.npz")
    with open(close_rates_run.parent / "tiny.pkl", "rb") as fh:
        test = pickle.load(fh)["test"]
    assert z["ids"].tolist() == [str(i) for i in test["id"]]
    y = z["labels"].astype(np.float64)
    n, n_non0 = len(y), int((y != 0).sum())
    for section in ("missing_rate", "frame_missing_rate", "subsets"):
        for key, row in m["results"][section].items():
            assert (row["n"], row["n_non0"]) == (n, n_non0), (section, key)
    pred = z["preds"][0, 1].astype(np.float64)  # MMSA's Mult_acc_5: clip to [-2, 2], round, compare
    acc5 = np.mean(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(y, -2, 2)))
    assert m["results"]["missing_rate"]["0.01"]["acc5"] == pytest.approx(acc5, abs=1e-9)
    df = pd.read_csv(close_rates_run / "results.csv", dtype={"key": str})
    assert (df["n"] == n).all() and (df["n_non0"] == n_non0).all() and "acc5" in df and "acc5_std" in df
    assert m["data"]["n"] == n and m["data"]["ids_sha256"] and m["data"]["source"].endswith("tiny.pkl")
    assert sentiment_metrics(np.array([2.4, -0.6, 1.4]), np.array([3.0, -1.0, 1.0]))["acc5"] == pytest.approx(1.0)


@pytest.mark.slow
def test_report_warns_when_runs_used_different_data(tmp_path, close_rates_run):
    for seed, (name, path, n) in enumerate([("a", "mosi.pkl", 686), ("b", "mosi.pkl", 686), ("c", "other.pkl", 425)]):
        m = fake_metrics(tmp_path / name, seed)
        m["config"]["data_path"] = path
        m["data"] = {"n": n, "ids_sha256": f"{n:016x}"}
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare([tmp_path / "a", tmp_path / "b"], tmp_path / "o1")  # same data: no warning
    with pytest.warns(UserWarning, match="different data") as caught:
        compare([tmp_path / "a", tmp_path / "c"], tmp_path / "o2")
    msg = str([w for w in caught if "different data" in str(w.message)][0].message)
    assert "a mosi.pkl, c other.pkl" in msg and "test n: a 686, c 425" in msg
    r = run_cli(str(tmp_path / "a"), str(close_rates_run), "--output", str(tmp_path / "o3"))
    assert r.returncode == 0 and "warning: the runs used different data" in r.stderr


def test_the_comparison_keeps_its_warnings_and_judges_data_by_its_digests(tmp_path, capsys):
    # a relative and an absolute path to one file were "different data", a file rewritten with other
    # labels at the same path was not; the warnings went to stderr only, not into the table a paper copies
    for seed, (name, path, labels) in enumerate([("rel", "data/mosi.pkl", "aa"), ("abs", "/x/data/mosi.pkl", "aa"),
                                                 ("relabelled", "/x/data/mosi.pkl", "bb")]):
        m = fake_metrics(tmp_path / name, seed)
        m["config"]["data_path"] = path
        m["data"] = {"n": 686, "ids_sha256": "0" * 16, "labels_sha256": labels * 8}
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare([tmp_path / "rel", tmp_path / "abs"], tmp_path / "o1")  # the same samples and labels
    assert report_main([str(tmp_path / "abs"), str(tmp_path / "relabelled"), "--output", str(tmp_path / "o2")]) == 0
    err = capsys.readouterr().err
    assert "warning: the runs used different data (test labels: abs " in err and "data/mosi.pkl" not in err
    md = (tmp_path / "o2" / "comparison.md").read_text()
    assert md.startswith("**Warning:** the runs used different data (test labels")
    assert json.loads((tmp_path / "o2" / "comparison.json").read_text())["warnings"][0].startswith(
        "the runs used different data")


def test_names_cannot_break_the_table_and_changes_to_them_are_said(tmp_path, capsys):
    for seed, name in enumerate(("a", "b", "same")):
        fake_metrics(tmp_path / name, seed)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "metrics.json").write_text((tmp_path / "same" / "metrics.json").read_text())
    assert report_main([str(tmp_path / "a"), str(tmp_path / "b"), "--names", "ours|v2", "TFN",
                        "--output", str(tmp_path / "o")]) == 0
    rows = [line for line in (tmp_path / "o" / "comparison.md").read_text().splitlines() if "ours" in line]
    assert rows and all(line.startswith("| ours\\|v2 | lf_dnn | 3 | ") for line in rows)  # | would add a column
    capsys.readouterr()
    for names, message in ((["x", "y (ensemble)"], "'y (ensemble)', which is how a run's ensemble row is named"),
                           (["x", "y\nz"], "holds a line break")):
        assert report_main([str(tmp_path / "a"), str(tmp_path / "b"), "--names", *names,
                            "--output", str(tmp_path / "o2")]) == 1
        assert message in capsys.readouterr().err
    (tmp_path / "q").mkdir()
    fake_metrics(tmp_path / "q" / "a", 5)
    assert report_main([str(tmp_path / "a"), str(tmp_path / "q" / "a"), str(tmp_path / "same"), str(tmp_path / "copy"),
                        "--output", str(tmp_path / "o3")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'q' / 'a'} is shown as 'a_2': 'a' is taken; give --names to choose" in err
    assert "warning: same and copy report identical results: the same run twice?" in err


@pytest.mark.slow
def test_figures_and_table_use_the_tables_prediction(real_run):
    """Risk-coverage at full coverage is the table's Acc-2; every artefact names its prediction."""
    from report.plots import decision_confidence, risk_coverage

    m = json.loads((real_run / "metrics.json").read_text())
    z = dict(np.load(real_run / "predictions.npz"))
    assert "Brier/NLL/ECE: P(positive)" in m["prediction"]
    for i, key in enumerate(["0.0", "0.3", "0.5"]):
        _, acc = risk_coverage(*decision_confidence(z, i))
        assert acc[-1] == pytest.approx(m["results"]["missing_rate"][key]["acc2_non0"], abs=1e-9)
        if key in m["risk_coverage"]:
            assert m["risk_coverage"][key]["acc_at_1.0"] == pytest.approx(acc[-1])
    csv = pd.read_csv(real_run / "results.csv", dtype={"key": str})
    row = csv[(csv.section == "missing_rate") & (csv.key == "0.5")].iloc[0]
    assert row["brier"] == pytest.approx(m["results"]["missing_rate"]["0.5"]["brier"])
    assert row["ece_twin_lo"] <= row["ece_twin_mean"] <= row["ece_twin_hi"]


def test_comparison_shows_probability_scores_and_ensemble_rows(tmp_path):
    fake_metrics(tmp_path / "a", 0)
    ens = fake_metrics(tmp_path / "b", 1)
    ens["ensemble"] = {s: {k: dict(v) for k, v in ens["results"][s].items()} for s in ("missing_rate", "subsets")}
    ens["ensemble"]["missing_rate"]["0.3"]["brier"] = 0.01  # the lowest Brier at p=0.3
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(ens))
    res = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp")
    df = res["probability_frame"]
    assert set(df.run) == {"a", "b", "b (ensemble)"}
    assert (tmp_path / "cmp" / "comparison_probability.csv").stat().st_size > 0
    rows = df[(df.section == "missing_rate") & (df.key == "0.3") & (df.metric == "brier")].set_index("run")
    winner = rows.loc[["a", "b"], "mean"].idxmin()  # lower is better for probability scores
    # seed means and ensembles are ranked apart: the lowest seed mean keeps its mark (it went to the ensemble)
    assert rows.loc["b (ensemble)", "best"] and rows.loc[winner, "best"] and rows["best"].sum() == 2
    seeds = df[(df.run == "b") & (df.metric == "brier") & (df.key == "0.3")]
    assert seeds["mean"].iloc[0] == pytest.approx(ens["results"]["missing_rate"]["0.3"]["brier"])  # not mixed
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "### Brier of P(positive)" in md and "| b (ensemble) |" in md and "3 (ensemble)" in md
    # a metrics.json from before the probability scores is still compared, on Acc-2/F1 only
    old = fake_metrics(tmp_path / "old", 2)
    for sec in ("results", "std"):
        for block in old[sec].values():
            for vals in block.values():
                for k in [k for k in vals if k.startswith(("brier", "nll", "ece"))]:
                    del vals[k]
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(old))
    res = compare([tmp_path / "a", tmp_path / "old"], tmp_path / "cmp2")
    assert res["probability_frame"] is None and set(res["frame"].metric) == {"acc2_non0", "f1_non0"}


@pytest.mark.slow
def test_resuming_seeds_finished_before_the_probability_scores(tmp_path):
    """A seed whose result predates Brier/NLL and p_pos is kept: the table shows '-', no ensemble."""
    data = tiny_pickle(tmp_path / "d.pkl")
    out = tmp_path / "run"
    assert train_main(tiny_args(data, out, "--seeds", "7", "8")) == 0
    old = out / "seed_8"
    res = json.loads((old / "result.json").read_text())
    for split in ("valid", "test"):
        for section in res[split].values():
            for vals in section.values():
                for k in ("brier", "nll", "ece_twin_mean", "ece_twin_lo", "ece_twin_hi"):
                    vals.pop(k, None)
        with np.load(old / f"result_{split}.npz") as z:
            arrays = {k: z[k] for k in z.files if k not in ("p_pos", "subset_p_pos")}
        np.savez(old / f"result_{split}.npz", **arrays)
    (old / "result.json").write_text(json.dumps(res))
    (out / "metrics.json").unlink()
    assert train_main(tiny_args(data, out, "--seeds", "7", "8", "--resume")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "ensemble" not in m and "brier" not in m["results"]["missing_rate"]["0.0"]
    assert m["results"]["missing_rate"]["0.0"]["acc2_non0"] > 0
    assert "p_pos" not in np.load(out / "predictions.npz").files


@pytest.mark.slow
def test_interfaces_doc_names_every_field_a_run_writes(real_run):
    """docs/INTERFACES.md names every metrics.json field, result-row field, data field,
    predictions.npz array and results.csv column that a run writes today."""
    doc = (ROOT / "docs" / "INTERFACES.md").read_text()
    m = json.loads((real_run / "metrics.json").read_text())
    with np.load(real_run / "predictions.npz") as z:
        arrays = set(z.files)
    columns = {c.removesuffix("_std") for c in pd.read_csv(real_run / "results.csv").columns}
    names = set(m) | set(m["results"]["missing_rate"]["0.0"]) | set(m["data"]) | arrays | columns
    assert {k for k in names if f'"{k}"' not in doc and f"`{k}`" not in doc} == set()
