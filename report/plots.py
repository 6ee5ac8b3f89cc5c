"""The one-run figures: ``missing_rates.png``, ``calibration.png``, ``risk_coverage.png``.

Each names the prediction it uses (``metrics["prediction"]``): the risk-coverage curve keeps the
table's decisions (so at full coverage it is the table's Acc-2) and ranks them by the P(positive)
of the decided class; ``calibration.png`` shows the reported P(positive). Figures use matplotlib's
object-oriented ``Figure`` (no pyplot, no backend switching).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from datasets import rate_key
from training.atomic import atomic_path
from training.metrics import (
    ECE_BINS,
    calibrated_twin,
    confidence_bins,
    ece_score,
    ece_twin_band,
    positive_probability,
)


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


def save_figure(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


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
    save_figure(fig, path)


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
    save_figure(fig, path)


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
    save_figure(fig, path)
    return summary
