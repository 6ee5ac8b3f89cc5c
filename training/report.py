"""What a run leaves behind: the printed table, ``metrics.json``, ``results.csv``,
``predictions.npz`` and the plots ``missing_rates.png``, ``calibration.png``, ``risk_coverage.png``.

Every table and figure names the prediction it uses (``metrics["prediction"]``): decisions and
errors come from the reported score, Brier/NLL/ECE from the reported P(positive); the
risk-coverage curve keeps the table's decisions (so at full coverage it is the table's Acc-2) and
ranks them by the P(positive) of the decided class; ``calibration.png`` shows that P(positive).
Figures use matplotlib's object-oriented ``Figure`` (no pyplot, no backend switching).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from datasets import SUBSETS, rate_key
from training.metrics import (
    COUNT_NAMES,
    ECE_BINS,
    METRIC_NAMES,
    calibrated_twin,
    confidence_bins,
    ece_score,
    ece_twin_band,
    positive_probability,
)

TABLE_METRICS = ("acc2_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc5", "acc7", "brier", "nll", "ece")
TWIN_COLUMN = "ece twin 90%"
ENSEMBLE_SECTIONS = (("missing_rate", "modality missing rate p"), ("subsets", "modalities present"))


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no stray file


def results_frame(results: dict, std: dict, ensemble: dict | None = None) -> pd.DataFrame:
    """One row per (section, key): its sample counts, every metric's mean and std over seeds; the deep
    ensemble's rows (``section`` ``ensemble_missing_rate`` / ``ensemble_subsets``, one prediction: std
    empty)."""
    rows = []
    for section in ("missing_rate", "frame_missing_rate", "subsets"):
        for key, mean in results.get(section, {}).items():
            row = {"section": section, "key": key, **{c: mean.get(c) for c in COUNT_NAMES}}
            for m in METRIC_NAMES:
                row[m] = mean.get(m, np.nan)
                row[f"{m}_std"] = std[section][key].get(m, np.nan)
            rows.append(row)
    for section, _ in ENSEMBLE_SECTIONS if ensemble else ():
        for key, vals in ensemble[section].items():
            rows.append({"section": f"ensemble_{section}", "key": key, **{c: vals.get(c) for c in COUNT_NAMES},
                         **{k: v for m in METRIC_NAMES for k, v in ((m, vals[m]), (f"{m}_std", np.nan))}})
    return pd.DataFrame(rows)


def _cell(mean: float | None, sd: float | None, m: str) -> str:
    if mean is None:  # a metric an older result does not carry
        return "-"
    if m in ("mae", "corr", "ece", "brier", "nll"):
        d = 4 if m in ("brier", "nll") else 3
        return f"{mean:.{d}f}" if sd is None else f"{mean:.{d}f}±{sd:.{d}f}"
    return f"{100 * mean:.1f}" if sd is None else f"{100 * mean:.1f}±{100 * sd:.1f}"


def _block(title: str, block: dict, std: dict | None) -> list[str]:
    """Rows of one section; ``std`` None: single values (one seed, or the ensemble)."""
    header = ["", *[m.replace("_", " ") for m in TABLE_METRICS], TWIN_COLUMN]
    rows = []
    for key, vals in block.items():
        cells = [_cell(vals.get(m), None if std is None else std[key].get(m), m) for m in TABLE_METRICS]
        twin = (f"{vals['ece_twin_mean']:.3f} [{vals['ece_twin_lo']:.3f}, {vals['ece_twin_hi']:.3f}]"
                if "ece_twin_mean" in vals else "-")
        rows.append([key, *cells, twin])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    counts = sorted({(v.get("n"), v.get("n_non0")) for v in block.values() if "n" in v})
    title = title.replace("(test", "(test" + "".join(f", n = {a} (non-0 {b})" for a, b in counts), 1)
    return [title, fmt.format(*header), *[fmt.format(*r) for r in rows], ""]


def _over_rates(title: str, mean: dict) -> str:
    nan = float("nan")
    return (f"{title}: Acc-2 non-0 {100 * mean['acc2_non0']:.1f}  F1 non-0 {100 * mean['f1_non0']:.1f}  "
            f"MAE {mean['mae']:.3f}  Brier {mean.get('brier', nan):.4f}  NLL {mean.get('nll', nan):.4f}  "
            f"ECE {mean['ece']:.3f}")


def format_table(results: dict, std: dict, n_seeds: int, note: str = "", ensemble: dict | None = None) -> str:
    """The printed table: random missing rates, subsets, frame-level rates; mean ± std in %; then the
    deep ensemble of the seeds as its own sections. ``note`` names the predictions used."""
    lines = [f"predictions: {note}", ""] if note else []
    for section, title in (*ENSEMBLE_SECTIONS, ("frame_missing_rate", "frame missing rate r")):
        if results.get(section):
            lines += _block(f"{title} (test; mean ± std over {n_seeds} seed(s); accuracies in %; "
                            f"{TWIN_COLUMN}: ECE of a calibrated predictor with the same confidences)",
                            results[section], std[section] if n_seeds > 1 else None)
    mean = results.get("mean_over_rates", {}).get("missing_rate")
    if mean:
        lines.append(_over_rates("mean over missing rates", mean))
    if ensemble:
        lines.append("")
        for section, title in ENSEMBLE_SECTIONS:
            lines += _block(f"deep ensemble of the {n_seeds} seeds, {title} (test; one prediction: the mean of the "
                            f"seeds' calibrated scores and P(positive); not part of mean ± std)",
                            ensemble[section], None)
        lines.append(_over_rates("deep ensemble, mean over missing rates", ensemble["mean_over_rates"]["missing_rate"]))
    return "\n".join(lines)


def save_predictions(path: Path, labels: np.ndarray, rates: list[float], per_seed: list[dict],
                     ids: np.ndarray | None = None) -> None:
    """``preds``/``probs``/``p_pos`` ``(S, R, N)`` per seed and rate (``p_pos``: the reported P(positive)),
    ``subset_preds``/``subset_p_pos`` ``(S, 7, N)``, ``masks``, ``labels``, ``rates``, ``ids``."""
    arrays = [r["arrays"] for r in per_seed]
    extra = {k: np.stack([a[k] for a in arrays]) for k in ("fusion_weights", "p_pos", "subset_p_pos")
             if all(k in a for a in arrays)}
    if ids is not None:
        extra["ids"] = np.asarray(ids, dtype=str)
    tmp = path.with_name(path.stem + ".tmp.npz")
    try:
        np.savez_compressed(
            tmp, labels=labels.astype(np.float32), rates=np.asarray(rates, dtype=np.float32),
            preds=np.stack([a["preds"] for a in arrays]), masks=np.stack([a["masks"] for a in arrays]),
            probs=np.stack([a["probs"] for a in arrays]), subset_names=np.array(list(SUBSETS)),
            subset_preds=np.stack([a["subset_preds"] for a in arrays]), **extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no stray file


def _rate_index(rates: np.ndarray, p: float) -> int | None:
    idx = np.flatnonzero(np.isclose(rates, p))
    return int(idx[0]) if len(idx) else None


def _p_pos(npz: dict, i: int) -> np.ndarray:
    """The reported P(positive) ``(S, N)`` at rate index ``i`` (the class head's for an older file)."""
    if "p_pos" in npz:
        return np.asarray(npz["p_pos"][:, i], dtype=np.float64)
    return np.stack([positive_probability(pr) for pr in npz["probs"][:, i]])


def _wrap(note: str) -> str:
    """A prediction note on two lines (decisions; probabilities) so a figure title fits."""
    return note.replace("; ", ";\n")


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_missing_rates(results: dict, std: dict, path: Path, title: str = "", note: str = "") -> None:
    keys = list(results["missing_rate"])
    x = [float(k) for k in keys]
    fig = Figure(figsize=(6, 4.3))
    ax = fig.subplots()
    for m, label in (("acc2_non0", "Acc-2 (non-0)"), ("f1_non0", "F1 (non-0)")):
        y = [100 * results["missing_rate"][k][m] for k in keys]
        e = [100 * std["missing_rate"][k][m] for k in keys]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    ax.set_xlabel("modality missing rate p")
    ax.set_ylabel("%")
    ax.set_title((title or "test accuracy under random missing modalities") + ("\n" + _wrap(note) if note else ""),
                 fontsize=8 if note else None)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_calibration(npz: dict, path: Path, rates: tuple[float, ...] = (0.0, 0.5), note: str = "") -> None:
    """Reliability diagrams of the reported P(positive) (top label, 10 equal-width confidence bins,
    seeds pooled) at the given missing rates: accuracy per bin with its count, and the 90% band of
    a perfectly calibrated predictor with the same confidences (per bin and for the ECE)."""
    labels = npz["labels"]
    non0 = labels != 0
    shown = [(p, i) for p in rates if (i := _rate_index(npz["rates"], p)) is not None]
    fig = Figure(figsize=(4.8 * max(1, len(shown)), 4.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(shown))))
    for ax, (p, i) in zip(axes, shown):
        p_pos = _p_pos(npz, i)[:, non0].reshape(-1)
        positive = np.tile(labels[non0] > 0, len(npz["preds"]))
        conf = np.maximum(p_pos, 1 - p_pos)
        correct = (p_pos >= 0.5) == positive
        bins = confidence_bins(conf)
        twin = calibrated_twin(conf)
        rows = [((b + 0.5) / ECE_BINS, conf[sel].mean(), correct[sel].mean(), sel.sum(),
                 *np.quantile(twin[:, sel].mean(1), [0.05, 0.95])) for b in range(ECE_BINS) if (sel := bins == b).any()]
        mid, centre, acc, count, lo, hi = map(np.array, zip(*rows))
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        ax.bar(mid, acc, width=0.9 / ECE_BINS, alpha=0.6, label="accuracy per bin")
        ax.errorbar(centre, centre, yerr=[centre - lo, hi - centre], fmt="o", color="grey", ms=3, capsize=4,
                    label="mean confidence; calibrated twin 90%")
        for m_, n in zip(mid, count):
            ax.text(m_, 0.02, f"n={n}", ha="center", fontsize=7)
        mean, b_lo, b_hi = ece_twin_band(p_pos)
        ax.set_title(f"p = {rate_key(p)}: ECE {ece_score(p_pos, positive):.3f} ({len(npz['preds'])} seed(s) pooled, "
                     f"n={len(p_pos)})\n"
                     f"calibrated twin {mean:.3f} [{b_lo:.3f}, {b_hi:.3f}]", fontsize=9)
        ax.set_xlim(0.45, 1.0)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence max(P, 1 - P)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=7)
    if note:
        fig.suptitle(note, fontsize=7)
    _save(fig, path)


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the most confident fraction of predictions, for coverage 1/N .. 1."""
    order = np.argsort(-conf, kind="stable")
    acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    cov = np.arange(1, len(order) + 1) / len(order)
    return cov, acc


def decision_confidence(npz: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the table's decisions (``preds > 0``) on the non-0 samples at rate
    index ``i``, seeds pooled; confidence is the reported P of the decided class."""
    labels = npz["labels"]
    non0 = labels != 0
    decided = npz["preds"][:, i][:, non0] > 0
    p_pos = _p_pos(npz, i)[:, non0]
    conf = np.where(decided, p_pos, 1 - p_pos).reshape(-1)
    return conf, (decided == (labels[non0] > 0)).reshape(-1)


def plot_risk_coverage(npz: dict, path: Path, rates: tuple[float, ...] = (0.0, 0.5), note: str = "") -> dict:
    """Accuracy of the table's decisions against coverage when the least confident are withheld."""
    summary = {}
    fig = Figure(figsize=(6, 4.3))
    ax = fig.subplots()
    for p in rates:
        i = _rate_index(npz["rates"], p)
        if i is None:
            continue
        cov, acc = risk_coverage(*decision_confidence(npz, i))
        ax.plot(cov, 100 * acc, label=f"p = {rate_key(p)}")
        summary[rate_key(p)] = {f"acc_at_{c}": float(acc[max(0, int(np.ceil(c * len(acc))) - 1)])
                              for c in (0.5, 0.8, 1.0)}
    ax.set_xlabel("coverage (fraction of predictions kept, most confident first)")
    ax.set_ylabel("Acc-2 non-0 (%), seeds pooled")
    ax.set_title("the table's decisions, ranked by the P of the decided class" + ("\n" + _wrap(note) if note else ""),
                 fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return summary


def ids_digest(ids: np.ndarray) -> str:
    """A short SHA-256 of the sample ids in order: equal digests, same samples in the same order."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def data_block(data, split: str = "test") -> dict:
    """What ``metrics.json`` records of the data a run used: source, format, the split's counts and
    ids digest, and the reader's notes (padding moved, segments dropped, folds used)."""
    sp = data.splits[split]
    return {"source": data.source, "format": data.format, "split": split, "n": sp.n,
            "n_non0": int((sp.labels != 0).sum()), "ids_sha256": ids_digest(sp.ids), "notes": list(data.notes)}


def write_report(out_dir: Path, metrics: dict, per_seed: list[dict], labels: np.ndarray,
                 rates: list[float], data=None) -> str:
    """Write every artefact into ``out_dir`` and return the printed table.

    ``data`` (the MultimodalData) adds the test ``ids`` to predictions.npz and a ``data`` block to
    metrics.json (see ``data_block``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = None
    if data is not None:
        ids = data.splits["test"].ids
        metrics["data"] = data_block(data)
    save_predictions(out_dir / "predictions.npz", labels, rates, per_seed, ids)
    with np.load(out_dir / "predictions.npz") as z:
        npz = {k: z[k] for k in z.files}
    note = metrics.get("prediction", "")
    plot_missing_rates(metrics["results"], metrics["std"], out_dir / "missing_rates.png", note=note)
    plot_calibration(npz, out_dir / "calibration.png", note=note)
    metrics["risk_coverage"] = plot_risk_coverage(npz, out_dir / "risk_coverage.png", note=note)
    results_frame(metrics["results"], metrics["std"], metrics.get("ensemble")).to_csv(
        out_dir / "results.csv", index=False)
    write_json_atomic(metrics, out_dir / "metrics.json")
    return format_table(metrics["results"], metrics["std"], len(per_seed), note, metrics.get("ensemble"))
