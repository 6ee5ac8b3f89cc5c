"""Compare several runs' ``metrics.json``: one table, one figure, AUILC per run.

Columns are Acc-2 and F1 (non-0) at every random modality-missing rate and every fixed subset,
mean ± std over each run's seeds, plus AUILC; then Brier, NLL and ECE of P(positive) (lower is
better; ECE with its calibrated-twin 90% band) when every run reports them. A run that carries a
deep ensemble of its seeds gets a second row, ``NAME (ensemble)``, scored as one prediction (no
std; never mixed into the seeds' mean). The best row per column is marked (bold in Markdown,
``best = True`` in the CSV), among the seed means and, apart, among the ensemble rows; ties are all
marked.

AUILC (area under the indicator-vs-missing-rate curve) is the trapezoid integral of a run's mean
Acc-2 (non-0) over the compared rates divided by the rate span (max - min), so it reads as a mean
accuracy over the interval; with a single rate it is that rate's value. The same is reported for
F1 (non-0). Because it is linear in the per-rate means, it equals the mean of the per-seed AUILCs;
its seed std cannot be recovered from metrics.json (per-rate stds only) and is not reported.

Runs whose rates (or subsets) differ are compared on the common ones only, with a warning naming
what was left out; no common rate at all is an error. Runs that used different data (another test
sample count, other test ids or labels by their digests; without both digests, another data file
or generated set) are compared with a warning naming the difference, as are runs renamed to keep
names apart and runs with identical results. The warnings head comparison.md and are listed in
comparison.json.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from training.atomic import atomic_open, write_json
from training.errors import UserError, writing

from .plots import save_figure

METRICS = {"acc2_non0": "Acc-2", "f1_non0": "F1"}
PROB_METRICS = {"brier": "Brier", "nll": "NLL", "ece": "ECE"}  # lower is better
TWIN = ("ece_twin_lo", "ece_twin_hi")
AUILC_NOTE = ("AUILC: trapezoid area under the mean Acc-2 (non-0) vs missing-rate curve over the compared rates, "
              "divided by the rate span, so it reads as a mean accuracy over the interval.")


class ReportError(UserError, ValueError):
    """A run folder cannot be compared (no metrics.json, malformed file, no common rates), or
    ``--output`` cannot hold the comparison."""


def read_metrics(file: Path) -> object:
    """The parsed JSON of a run's metrics file; ReportError when it is a folder, unreadable or not JSON."""
    if file.is_dir():
        raise ReportError(f"{file} is a folder, not a metrics file; give a finished run's folder (holding a "
                          "metrics.json file) or its metrics.json")
    try:
        return json.loads(file.read_text())
    except OSError as err:
        raise ReportError(f"cannot read {file}: {err.strerror or err}; check the path and its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{file} is not valid JSON: {err}") from None


@dataclass
class Run:
    name: str
    path: Path
    seeds: list
    model: str
    results: dict  # section -> key -> metric -> mean
    std: dict  # section -> key -> metric -> std
    data: dict  # what identifies the data: {"data": source, "test n": int, "test ids": digest}; None = unknown
    prediction: str = ""  # which predictions the run's metrics use
    ensemble: bool = False  # one prediction: the deep ensemble of the seeds


def _section(obj: dict, name: str, where: str, required: bool) -> dict:
    sec = obj.get(name)
    if sec is None and not required:
        return {}
    if not isinstance(sec, dict) or (required and not sec):
        raise ReportError(f"{where} is malformed: '{name}' is missing or empty")
    return sec


def load_run(path: Path | str, name: str | None = None) -> Run:
    """Read ``path/metrics.json`` (or ``path`` itself when it is a file) into a Run."""
    path = Path(path)
    file = path if path.is_file() else path / "metrics.json"
    if not file.exists():
        raise ReportError(f"{path} holds no metrics.json (is it a finished run's --output_dir?)")
    m = read_metrics(file)
    if not isinstance(m, dict) or not isinstance(m.get("results"), dict) or not isinstance(m.get("std"), dict):
        raise ReportError(f"{file} is malformed: it needs 'results' and 'std' objects")
    results, std = {}, {}
    for section, required in (("missing_rate", True), ("subsets", False)):
        res = _section(m["results"], section, f"{file} (results)", required)
        sd = _section(m["std"], section, f"{file} (std)", bool(res))
        for key, vals in res.items():
            for metric in METRICS:
                for label, src in (("results", vals), ("std", sd.get(key))):
                    v = src.get(metric) if isinstance(src, dict) else None
                    if not isinstance(v, (int, float)) or not math.isfinite(v):
                        raise ReportError(f"{file} is malformed: {label}.{section}.{key}.{metric} is {v!r}")
        if section == "missing_rate":
            try:
                [float(k) for k in res]
            except ValueError:
                raise ReportError(f"{file} is malformed: missing-rate keys {list(res)} are not numbers") from None
        results[section] = {k: {mt: float(v[mt]) for mt in (*METRICS, *_optional(v))} for k, v in res.items()}
        std[section] = {k: {mt: _number(sd[k].get(mt)) for mt in results[section][k]} for k in res}
    cfg = m.get("config") if isinstance(m.get("config"), dict) else {}
    seeds = m.get("seeds") or cfg.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise ReportError(f"{file} is malformed: 'seeds' is {seeds!r}, not a list of seed numbers")
    label = name or (path.parent.name if path.is_file() else path.resolve().name)
    unfinished = m.get("unfinished_checkpoints")
    if isinstance(unfinished, list) and unfinished:
        warnings.warn(f"{label} was evaluated from {len(unfinished)} checkpoint(s) of seeds that had not finished "
                      f"training (their best epoch so far): {', '.join(map(str, unfinished))}", stacklevel=2)
    return Run(label, path, list(seeds), str(cfg.get("model", "?")), results, std, data_identity(m),
               str(m.get("prediction", "")))


def data_identity(m: dict) -> dict:
    """The data a metrics.json was measured on: source (data path, or the generated set and its seed),
    test sample count and test ids digest; None where the file does not say (older runs)."""
    cfg = m.get("config") if isinstance(m.get("config"), dict) else {}
    block = m.get("data") if isinstance(m.get("data"), dict) else {}
    source = cfg.get("data_path") or block.get("source")
    if source is None and cfg.get("dataset"):
        source = f"{cfg['dataset']} (generated, seed {cfg.get('synthetic_seed', 0)})"
    first = next(iter(m["results"]["missing_rate"].values()), {})
    n = block.get("n", first.get("n") if isinstance(first, dict) else None)
    def text(v: object) -> str | None:  # a malformed entry counts as unknown
        return v if isinstance(v, str) else None

    return {"data": text(source), "test n": n if isinstance(n, int) and not isinstance(n, bool) else None,
            "test ids": text(block.get("ids_sha256")), "test labels": text(block.get("labels_sha256"))}


def check_same_data(runs: list[Run]) -> None:
    """Warn (one line) when the runs' data differ in test sample count, test ids or test labels (their
    digests), or, where a run does not record both digests, in source (data path or generated set)."""
    diffs = []
    digests = all(r.data.get("test ids") and r.data.get("test labels") for r in runs)
    for field in ("test n", "test ids", "test labels") if digests else ("data", "test n", "test ids", "test labels"):
        known = [(r.name, r.data.get(field)) for r in runs if r.data.get(field) is not None]
        if len({v for _, v in known}) > 1:
            diffs.append(f"{field}: " + ", ".join(f"{name} {v}" for name, v in known))
    if diffs:
        warnings.warn(f"the runs used different data ({'; '.join(diffs)}); their numbers are not measured on the "
                      "same samples", stacklevel=2)


def _number(v: object) -> float:
    """``v`` as a float, NaN when it is not a finite number (an std a run does not give: shown without ±)."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")


def _optional(vals: dict) -> tuple[str, ...]:
    """The probability scores (and ECE's twin band) present as finite numbers in ``vals``."""
    keys = (*PROB_METRICS, *TWIN)
    ok = all(isinstance(vals.get(k), (int, float)) and math.isfinite(vals[k]) for k in keys)
    return keys if ok else ()


def ensemble_run(run: Run, path: Path) -> Run | None:
    """The deep-ensemble row of ``run`` (its metrics.json ``ensemble``), or None."""
    file = path if path.is_file() else path / "metrics.json"
    ens = read_metrics(file).get("ensemble")
    if not isinstance(ens, dict):
        return None
    try:
        results = {s: {k: {mt: float(v[mt]) for mt in (*METRICS, *_optional(v))} for k, v in ens[s].items()}
                   for s in ("missing_rate", "subsets")}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReportError(f"{file} is malformed: ensemble: {err}") from None
    bad = next((f"{s}.{k}.{mt} is {v!r}" for s, sec in results.items() for k, vals in sec.items()
                for mt, v in vals.items() if not math.isfinite(v)), None)
    if bad is None and not results["missing_rate"]:
        bad = "'missing_rate' is empty"
    if bad is not None:
        raise ReportError(f"{file} is malformed: ensemble.{bad}")
    nan = {s: {k: dict.fromkeys(v, float("nan")) for k, v in sec.items()} for s, sec in results.items()}
    return Run(f"{run.name} (ensemble)", run.path, run.seeds, run.model, results, nan, run.data, run.prediction,
               True)


def probability_metrics(runs: list[Run], rates: list[str], subsets: list[str]) -> list[str]:
    """The probability scores every run reports at every compared rate and subset."""
    have = all(set(PROB_METRICS) <= set(r.results[s][k]) for r in runs
               for s, keys in (("missing_rate", rates), ("subsets", subsets)) for k in keys)
    return list(PROB_METRICS) if have else []


def common_keys(runs: list[Run]) -> tuple[list[str], list[str]]:
    """The missing rates (sorted) and subsets every run has; warns about the ones left out."""
    rate_sets = [set(r.results["missing_rate"]) for r in runs]
    rates = sorted(set.intersection(*rate_sets), key=float)
    if not rates:
        listed = "; ".join(f"{r.name}: {', '.join(sorted(s, key=float))}" for r, s in zip(runs, rate_sets))
        raise ReportError(f"the runs share no missing rate ({listed})")
    for r, s in zip(runs, rate_sets):
        extra = sorted(s - set(rates), key=float)
        if extra:
            warnings.warn(f"{r.name}: missing rate(s) {', '.join(extra)} are not in every run; compared on "
                          f"{', '.join(rates)} only", stacklevel=2)
    subset_sets = [list(r.results["subsets"]) for r in runs]
    subsets = [s for s in subset_sets[0] if all(s in other for other in subset_sets[1:])]
    for r, s in zip(runs, subset_sets):
        extra = [k for k in s if k not in subsets]
        if extra:
            warnings.warn(f"{r.name}: subset(s) {', '.join(extra)} are not in every run and are left out",
                          stacklevel=2)
    return rates, subsets


def auilc(rates: list[str], values: list[float]) -> float:
    """Trapezoid area under ``values`` over ``rates`` divided by the rate span (the value itself for one rate)."""
    x = np.array([float(r) for r in rates])
    y = np.asarray(values, dtype=np.float64)
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def comparison_frame(runs: list[Run], rates: list[str], subsets: list[str],
                     metrics: list[str] | None = None) -> pd.DataFrame:
    """Tidy table: one row per (run, section, key, metric) with mean, std and the best flag;
    ``ensemble`` marks a run's deep-ensemble row. Default: Acc-2/F1 (highest is best) plus AUILC;
    ``metrics`` from ``PROB_METRICS``: those (lowest is best, ECE with its twin band), no AUILC."""
    prob = metrics is not None
    rows = []
    for r in runs:
        for section, keys in (("missing_rate", rates), ("subsets", subsets)):
            for key in keys:
                for metric in metrics or METRICS:
                    vals = r.results[section][key]
                    rows.append({"run": r.name, "model": r.model, "n_seeds": len(r.seeds), "ensemble": r.ensemble,
                                 "section": section, "key": key, "metric": metric, "mean": vals[metric],
                                 "std": r.std[section][key][metric],
                                 **({"twin_lo": vals[TWIN[0]], "twin_hi": vals[TWIN[1]]} if metric == "ece" else {})})
        for metric in () if prob else METRICS:
            rows.append({"run": r.name, "model": r.model, "n_seeds": len(r.seeds), "section": "auilc",
                         "key": f"{rates[0]}-{rates[-1]}", "metric": metric,
                         "mean": auilc(rates, [r.results["missing_rate"][k][metric] for k in rates]),
                         "std": float("nan"), "ensemble": r.ensemble})
    df = pd.DataFrame(rows)
    # seed means and ensembles ranked apart: an ensemble (one prediction) is not a seed mean's rival
    col_best = df.groupby(["ensemble", "section", "key", "metric"])["mean"].transform("min" if prob else "max")
    df["best"] = np.isclose(df["mean"], col_best, rtol=0.0, atol=1e-12)
    return df


def _cell(mean: float, std: float, best: bool, n_seeds: int, scale: float = 100.0, digits: int = 1) -> str:
    text = f"{scale * mean:.{digits}f}"
    if n_seeds > 1 and math.isfinite(std):
        text += f" ± {scale * std:.{digits}f}"
    return f"**{text}**" if best else text


def _md(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` would start a new column."""
    return " ".join(str(text).split("\n")).replace("|", "\\|")


def _seeds(r: Run) -> str:
    return f"{len(r.seeds)} (ensemble)" if r.ensemble else str(len(r.seeds))


def markdown_table(df: pd.DataFrame, runs: list[Run], rates: list[str], subsets: list[str],
                   prob: pd.DataFrame | None = None, warned: list[str] | None = None) -> str:
    """One Markdown table per metric: runs as rows; rates, subsets and AUILC as columns (in %); then
    one per probability score of ``prob`` (a ``comparison_frame`` of ``PROB_METRICS``); ``warned``:
    the comparison's warnings, first, so that a copied table keeps them in view."""
    lines = [f"**Warning:** {_md(w)}" for w in warned or []] + ([""] if warned else [])
    for metric, label in METRICS.items():
        cols = ([("missing_rate", k, f"p={k}") for k in rates] + [("subsets", k, k) for k in subsets]
                + [("auilc", f"{rates[0]}-{rates[-1]}", "AUILC")])
        lines += [f"### {label} (non-0), % — mean ± std over seeds; best per column in bold (seed means and "
                  "ensembles apart)", "",
                  "| run | model | seeds | " + " | ".join(c[2] for c in cols) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
        sel = df[df["metric"] == metric].set_index(["run", "section", "key"])
        for r in runs:
            cells = [_cell(*sel.loc[(r.name, s, k), ["mean", "std", "best"]], len(r.seeds)) for s, k, _ in cols]
            lines.append(f"| {_md(r.name)} | {_md(r.model)} | {_seeds(r)} | " + " | ".join(cells) + " |")
        lines.append("")
    for metric in [m for m in PROB_METRICS if prob is not None and m in set(prob["metric"])]:
        cols = [("missing_rate", k, f"p={k}") for k in rates] + [("subsets", k, k) for k in subsets]
        twin = "; [calibrated-twin 90% band]" if metric == "ece" else ""
        lines += [f"### {PROB_METRICS[metric]} of P(positive) (non-0), lower is better — mean ± std over seeds"
                  f"{twin}; best per column in bold (seed means and ensembles apart)", "",
                  "| run | model | seeds | " + " | ".join(c[2] for c in cols) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
        sel = prob[prob["metric"] == metric].set_index(["run", "section", "key"])
        for r in runs:
            cells = []
            for s, k, _ in cols:
                row = sel.loc[(r.name, s, k)]
                cell = _cell(row["mean"], row["std"], row["best"], len(r.seeds), 1.0, 3 if metric == "ece" else 4)
                cells.append(cell + (f" [{row['twin_lo']:.3f}, {row['twin_hi']:.3f}]" if metric == "ece" else ""))
            lines.append(f"| {_md(r.name)} | {_md(r.model)} | {_seeds(r)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("p: random modality-missing rate (test split); T, A, V, ...: the modalities present. AUILC: "
                 "trapezoid area under the table's metric vs missing-rate curve over the compared rates, divided "
                 "by the rate span, so it reads as a mean over the interval. (ensemble): the deep ensemble of "
                 "the run's seeds, one prediction, ranked among the ensemble rows only. std: the population "
                 "standard deviation over seeds (ddof = 0).")
    notes = sorted({r.prediction for r in runs if r.prediction and not r.ensemble})
    for n in notes:
        who = [r.name for r in runs if r.prediction == n and not r.ensemble]
        every = len(who) == len([r for r in runs if not r.ensemble])
        lines.append(f"Predictions: {n}" + ("" if every else f" ({', '.join(who)})"))
    return "\n".join(lines) + "\n"


def plot_comparison(runs: list[Run], rates: list[str], path: Path) -> None:
    """Acc-2 and F1 (non-0) against missing rate, one line per run, bands of ± one seed std."""
    x = np.array([float(k) for k in rates])
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (metric, label) in zip(axes, METRICS.items()):
        for r in runs:
            y = 100 * np.array([r.results["missing_rate"][k][metric] for k in rates])
            e = 100 * np.array([r.std["missing_rate"][k][metric] for k in rates])
            au = 100 * auilc(rates, y / 100)
            (line,) = ax.plot(x, y, marker="o", label=f"{r.name} (AUILC {au:.1f})")
            if np.isfinite(e).all():
                ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("modality missing rate p")
        ax.set_ylabel(f"{label} non-0 (%)")
        ax.set_title(f"{label} (non-0); bands: ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


OUTPUTS = ("comparison.md", "comparison.csv", "comparison.png", "comparison.json", "comparison_probability.csv")


def unique_names(names: list[str]) -> list[str]:
    """``names`` with a repeated one suffixed ``_2``, ``_3``, ... (the first free suffix: a suffixed name
    never equals another run's name)."""
    taken, out = set(names), []
    for name in names:
        if name in out:
            k = 2
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        out.append(name)
    return out


def rename(runs: list[Run]) -> None:
    """Give runs that share a name unique ones (``unique_names``), warning about each change."""
    for r, name in zip(runs, unique_names([r.name for r in runs])):
        if name != r.name:
            warnings.warn(f"{r.path} is shown as {name!r}: {r.name!r} is taken; give --names to choose",
                          stacklevel=3)
            r.name = name


def check_repeats(runs: list[Run]) -> None:
    """Warn when two runs report the same numbers to the last digit: one run given twice (a copy, or an
    evaluation of its checkpoints on the same data) would otherwise look like agreement."""
    seen: dict[str, str] = {}
    for r in runs:
        key = json.dumps([r.ensemble, r.results, r.std], sort_keys=True)
        if key in seen:
            warnings.warn(f"{seen[key]} and {r.name} report identical results: the same run twice?", stacklevel=3)
        seen.setdefault(key, r.name)


def check_output(output: str | Path) -> Path:
    """``--output`` as a Path; ReportError when it is empty or a file."""
    if not str(output).strip():
        raise ReportError("--output is empty; give the folder for the comparison (e.g. --output runs/compare)")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--output {out} is a file; choose a folder (a new one, or one holding an earlier "
                          "comparison, with --overwrite)")
    return out


def compare(paths: list[str | Path], output: str | Path, names: list[str] | None = None,
            overwrite: bool = False) -> dict:
    """Write comparison.md, comparison.csv, comparison.png and comparison.json into ``output``; a
    comparison already there is replaced only with ``overwrite``. Everything is computed before the
    first file is written."""
    if not paths:
        raise ReportError("give at least one run folder")
    if names is not None and len(names) != len(paths):
        raise ReportError(f"--names has {len(names)} name(s) for {len(paths)} run(s)")
    if names is not None:
        bad = next((n for n in names if not n.strip() or names.count(n) > 1 or n.endswith(" (ensemble)")
                    or "\n" in n), None)
        if bad is not None:
            problem = ("an empty name" if not bad.strip() else f"{bad!r} twice" if names.count(bad) > 1
                       else f"{bad!r}, which " + ("holds a line break" if "\n" in bad else
                                                  "is how a run's ensemble row is named"))
            raise ReportError(f"--names gives {problem}; give each run its own name")
    out = check_output(output)
    folders: dict[Path, str] = {}
    for p in paths:  # the metrics file itself: a folder and its metrics.json, through any link (runs/latest)
        key = (Path(p) / "metrics.json" if Path(p).is_dir() else Path(p)).resolve()
        if key in folders:
            raise ReportError(f"{folders[key]} and {p} are the same run; give each run once")
        folders[key] = str(p)
    held = [f for f in OUTPUTS if (out / f).exists()]
    if held and not overwrite:
        raise ReportError(f"{output} already holds a comparison ({', '.join(held)}); pass --overwrite to "
                          "replace it, or choose another --output")
    with warnings.catch_warnings(record=True) as caught:  # kept in comparison.md/.json too, then passed on
        warnings.simplefilter("always")
        runs = [load_run(p, n) for p, n in zip(paths, names or [None] * len(paths))]
        rename(runs)  # two folders with the same base name
        runs = [x for r in runs for x in (r, ensemble_run(r, r.path)) if x is not None]
        rename(runs)  # an ensemble row named like a run
        rates, subsets = common_keys(runs)
        check_same_data(runs)
        check_repeats(runs)
    warned = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn(w.message, stacklevel=2)
    df = comparison_frame(runs, rates, subsets)
    prob_metrics = probability_metrics(runs, rates, subsets)
    prob = comparison_frame(runs, rates, subsets, prob_metrics) if prob_metrics else None
    table = markdown_table(df, runs, rates, subsets, prob, warned)
    au = df[df["section"] == "auilc"]
    summary = {
        "warnings": warned,
        "auilc_definition": AUILC_NOTE,
        "rates": [float(k) for k in rates],
        "subsets": subsets,
        "runs": [{"name": r.name, "path": str(r.path), "model": r.model, "seeds": r.seeds, "data": r.data,
                  "ensemble": r.ensemble,
                  "auilc": {m: float(au[(au["run"] == r.name) & (au["metric"] == m)]["mean"].iloc[0])
                            for m in METRICS}} for r in runs],
        "best": {},
    }
    for row in pd.concat([df, prob])[lambda d: d["best"]].itertuples() if prob is not None else \
            df[df["best"]].itertuples():
        summary["best"].setdefault(f"{row.section}/{row.key}/{row.metric}", []).append(row.run)
    with writing(out, "--output"):
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "comparison.csv") as fh:
            df.to_csv(fh, index=False)
        if prob is not None:
            with atomic_open(out / "comparison_probability.csv") as fh:
                prob.to_csv(fh, index=False)
        else:  # replacing a comparison that had one: it would outlive the runs it was about
            (out / "comparison_probability.csv").unlink(missing_ok=True)
        with atomic_open(out / "comparison.md") as fh:
            fh.write(table)
        plot_comparison(runs, rates, out / "comparison.png")
        write_json(summary, out / "comparison.json")
    return {"table": table, "summary": summary, "frame": df, "probability_frame": prob}
