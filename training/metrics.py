"""Sentiment metrics with MMSA's definitions (scikit-learn underneath), proper scores and top-label ECE.

has-0: ``pred >= 0`` vs ``label >= 0`` over every sample.
non-0: only samples with ``label != 0``; ``pred > 0`` vs ``label > 0``.
F1 is weighted F1. Acc-7 compares values rounded after clipping to [-3, 3]; Acc-5 (MMSA's
``Mult_acc_5``) after clipping to [-2, 2]. Every result also carries its sample counts ``n`` and
``n_non0`` (ints, ``COUNT_NAMES``).
Brier and NLL are the proper scores of P(positive) on the binary non-0 task (lower is better).
ECE is the top-label expected calibration error (10 equal-width bins) of the same P(positive),
read against its calibrated-twin band: the ECE a perfectly calibrated predictor with the same
confidences shows by chance (mean and 90% interval over seeded simulations).
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, mean_absolute_error

from datasets.classes import positive_probability

METRIC_NAMES = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece", "acc5",
                "brier", "nll", "ece_twin_mean", "ece_twin_lo", "ece_twin_hi")
COUNT_NAMES = ("n", "n_non0")  # samples a result was computed on (all, label != 0); no spread over seeds
ECE_BINS = 10
TWIN_SIMULATIONS = 1000


def confidence_bins(conf: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each confidence in ``n_bins`` equal-width bins of [0, 1] (1.0 joins the last)."""
    return np.minimum((np.asarray(conf, dtype=np.float64) * n_bins).astype(int), n_bins - 1)


def ece_score(p_pos: np.ndarray, positive: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE of binary predictions: confidence max(p, 1-p) in ``n_bins`` equal-width bins."""
    p_pos = np.asarray(p_pos, dtype=np.float64)
    if len(p_pos) == 0:
        return 0.0
    conf = np.maximum(p_pos, 1.0 - p_pos)
    correct = (p_pos >= 0.5) == np.asarray(positive, dtype=bool)
    gap = np.bincount(confidence_bins(conf, n_bins), weights=correct - conf, minlength=n_bins)  # hits - sum of conf
    return float(np.abs(gap).sum() / len(conf))


@functools.lru_cache(maxsize=1)
def _uniforms(n: int, n_sims: int, seed: int) -> np.ndarray:
    """``(n_sims, n)`` float32 uniforms of ``seed`` (read-only). Kept for the next call: every mask
    of a sweep scores the same samples, so their draws are the same (at n = 4,659 the draws are
    most of a metrics call)."""
    u = np.random.default_rng(seed).random((n_sims, n), dtype=np.float32)
    u.flags.writeable = False
    return u


def calibrated_twin(conf: np.ndarray, n_sims: int = TWIN_SIMULATIONS, seed: int = 0) -> np.ndarray:
    """``(n_sims, N)`` bool: the hits of a perfectly calibrated predictor with confidences ``conf (N,)``
    (each prediction correct with probability its confidence), seeded. The uniforms are drawn in
    float32 (the band needs no more precision, and they cost less to draw)."""
    conf = np.asarray(conf, dtype=np.float64)
    return _uniforms(len(conf), n_sims, seed) < conf.astype(np.float32)


def ece_twin_band(p_pos: np.ndarray, n_bins: int = ECE_BINS, n_sims: int = TWIN_SIMULATIONS,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, 5th, 95th percentile) of the ECE of the calibrated twin of ``p_pos``."""
    p_pos = np.asarray(p_pos, dtype=np.float64)
    if len(p_pos) == 0:
        return 0.0, 0.0, 0.0
    conf = np.maximum(p_pos, 1.0 - p_pos)
    # samples sorted by bin, so each simulation's hits per bin are sums over contiguous runs
    bins = confidence_bins(conf, n_bins)
    order = np.argsort(bins, kind="stable")
    conf, bins = conf[order], bins[order]
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    hits = np.add.reduceat(calibrated_twin(conf, n_sims, seed), starts, axis=1, dtype=np.int64)  # (S, bins used)
    eces = np.abs(hits - np.add.reduceat(conf, starts)).sum(1) / len(conf)
    lo, hi = np.quantile(eces, [0.05, 0.95])
    return float(eces.mean()), float(lo), float(hi)


def probability_scores(p_pos: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Brier, NLL, ECE and ECE's calibrated-twin band of ``p_pos (N,)`` against ``positive (N,)``."""
    p_pos = np.clip(np.asarray(p_pos, dtype=np.float64), 0.0, 1.0)
    positive = np.asarray(positive, dtype=bool)
    if len(p_pos) == 0:
        raise ValueError("no non-0 samples to score probabilities on")
    twin = ece_twin_band(p_pos)
    return {"brier": float(brier_score_loss(positive, p_pos, pos_label=True)),
            "nll": float(log_loss(positive, p_pos, labels=[False, True])),
            "ece": ece_score(p_pos, positive),
            "ece_twin_mean": twin[0], "ece_twin_lo": twin[1], "ece_twin_hi": twin[2]}


def sentiment_metrics(preds: np.ndarray, labels: np.ndarray, probs: np.ndarray | None = None,
                      p_pos: np.ndarray | None = None) -> dict:
    """Every metric of ``METRIC_NAMES`` and the counts ``COUNT_NAMES`` for ``preds (N,)`` against
    ``labels (N,)``.

    The probability scores (Brier, NLL, ECE and its band) use ``p_pos (N,)`` = P(positive), or the
    class probabilities ``probs (N, C)`` when it is not given (all 0.0 when neither is, or no
    label is non-0).
    """
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    if not np.isfinite(preds).all():
        raise ValueError("predictions contain NaN or Inf")
    non0 = labels != 0
    out = {
        "acc2_has0": accuracy_score(labels >= 0, preds >= 0),
        "f1_has0": f1_score(labels >= 0, preds >= 0, average="weighted"),
        "acc2_non0": accuracy_score(labels[non0] > 0, preds[non0] > 0),
        "f1_non0": f1_score(labels[non0] > 0, preds[non0] > 0, average="weighted"),
        "mae": mean_absolute_error(labels, preds),
        # A constant prediction has no correlation; report 0 rather than NaN (JSON has no NaN).
        "corr": float(np.corrcoef(preds, labels)[0, 1]) if preds.std() > 0 and labels.std() > 0 else 0.0,
        "acc7": accuracy_score(np.round(np.clip(labels, -3, 3)), np.round(np.clip(preds, -3, 3))),
        "acc5": accuracy_score(np.round(np.clip(labels, -2, 2)), np.round(np.clip(preds, -2, 2))),
    }
    if p_pos is None and probs is not None:
        p_pos = positive_probability(probs)
    if p_pos is not None and non0.any():
        out.update(probability_scores(np.asarray(p_pos).reshape(-1)[non0], labels[non0] > 0))
    else:
        out.update({k: 0.0 for k in METRIC_NAMES if k not in out})
    return {**{k: float(out[k]) for k in METRIC_NAMES}, "n": int(len(labels)), "n_non0": int(non0.sum())}


def mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and (population) std over seeds of the metrics every seed has; counts stay ints, no std."""
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]  # a resumed older seed may lack some
    arr = {k: np.array([m[k] for m in per_seed], dtype=np.float64) for k in keys}
    mean = {k: int(round(v.mean())) if k in COUNT_NAMES else float(v.mean()) for k, v in arr.items()}
    return mean, {k: float(v.std()) for k, v in arr.items() if k not in COUNT_NAMES}
