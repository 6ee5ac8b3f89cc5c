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
from sklearn.metrics import mean_absolute_error, mean_squared_error, multilabel_confusion_matrix

from datasets.classes import positive_probability

METRIC_NAMES = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece", "acc5",
                "brier", "nll", "ece_twin_mean", "ece_twin_lo", "ece_twin_hi")
PROBABILITY_NAMES = ("brier", "nll", "ece", "ece_twin_mean", "ece_twin_lo", "ece_twin_hi")  # of P(positive)
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
    conf = np.asarray(conf, dtype=np.float32)
    return _uniforms(len(conf), n_sims, seed) < conf


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
    twin = calibrated_twin(conf, n_sims, seed).view(np.uint8)  # (S, N) 0/1
    # hits per simulation and bin (S, bins used): a sum over each bin's columns (bins <= n_bins, and
    # a byte sum is several times faster than np.add.reduceat over a bool array)
    hits = np.stack([twin[:, a:b].sum(1, dtype=np.int64) for a, b in zip(starts, np.r_[starts[1:], len(conf)])], 1)
    eces = np.abs(hits - np.add.reduceat(conf, starts)).sum(1) / len(conf)
    lo, hi = np.quantile(eces, [0.05, 0.95])
    return float(eces.mean()), float(lo), float(hi)


def probability_scores(p_pos: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Brier, NLL, ECE and ECE's calibrated-twin band of ``p_pos (N,)`` against ``positive (N,)``."""
    p_pos = np.clip(np.asarray(p_pos, dtype=np.float64).reshape(1, -1), 0.0, 1.0)
    if p_pos.size == 0:
        raise ValueError("no non-0 samples to score probabilities on")
    return {k: float(v[0]) for k, v in _proper_scores(p_pos, np.asarray(positive, dtype=bool)).items()}


def _binary_scores(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy (K,), weighted F1 (K,)) of bool predictions ``pred (N, K)`` against ``truth (N, K)``,
    column by column, from scikit-learn's per-column confusion matrices (one call for all K):
    accuracy = (TN + TP) / N; weighted F1 = the two classes' F1 = 2TP / (2TP + FP + FN), weighted by
    their true counts (a class absent from the truth weighs 0)."""
    (tn, fp), (fn, tp) = multilabel_confusion_matrix(truth, pred).transpose(1, 2, 0).astype(np.float64)
    n = len(truth)
    f1_pos = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=tp + fp + fn > 0)
    f1_neg = np.divide(2 * tn, 2 * tn + fn + fp, out=np.zeros_like(tn), where=tn + fp + fn > 0)
    return (tn + tp) / n, (f1_pos * (tp + fn) + f1_neg * (tn + fp)) / n


def _rounded_accuracy(labels: np.ndarray, preds: np.ndarray, bound: float) -> np.ndarray:
    """Acc-7 (``bound`` 3) or Acc-5 (2) of ``preds (K, N)``: rounded after clipping to [-bound, bound]."""
    return (np.round(np.clip(preds, -bound, bound)) == np.round(np.clip(labels, -bound, bound))).mean(1)


def _correlation(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``preds (K, N)`` with ``labels (N,)`` (0 for a constant row)."""
    pc = preds - preds.mean(1, keepdims=True)
    lc = labels - labels.mean()
    norm = np.sqrt((pc * pc).sum(1) * (lc * lc).sum())
    r = np.divide(pc @ lc, norm, out=np.zeros(len(preds)), where=norm > 0)
    # a constant prediction has no correlation; report 0 rather than NaN (JSON has no NaN)
    return np.where((preds.std(1) > 0) & (labels.std() > 0), np.clip(r, -1.0, 1.0), 0.0)


def _proper_scores(p_pos: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """Brier, NLL, ECE and the twin band (``PROBABILITY_NAMES``) of each row of ``p_pos (K, M)`` against
    ``positive (M,)``. Brier is the mean squared error of P(positive) (scikit-learn, all rows in one
    call); NLL is scikit-learn's ``log_loss`` (probabilities clipped to [eps, 1 - eps] of float64),
    computed for all rows at once."""
    brier = mean_squared_error(np.broadcast_to(positive[:, None], p_pos.T.shape), p_pos.T, multioutput="raw_values")
    eps = np.finfo(np.float64).eps
    nll = -np.log(np.clip(np.where(positive, p_pos, 1.0 - p_pos), eps, 1 - eps)).mean(1)
    ece = [(ece_score(p, positive), *ece_twin_band(p)) for p in p_pos]
    return {"brier": brier, "nll": nll, **dict(zip(PROBABILITY_NAMES[2:], np.array(ece).T))}


def sentiment_metrics_many(preds: np.ndarray, labels: np.ndarray, p_pos: np.ndarray | None = None) -> list[dict]:
    """``[sentiment_metrics(preds[k], labels, p_pos=p_pos[k]) for k]`` for ``preds (K, N)`` and
    ``p_pos (K, N)`` (or none), computed for all K rows at once: a sweep scores 15 predictions of
    the same labels, and one scikit-learn call per metric instead of one per prediction is what
    keeps its metrics cheap next to the model (per call, scikit-learn's input checks cost more than
    the metric at these sizes)."""
    preds = np.atleast_2d(np.asarray(preds, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if preds.shape[1:] != labels.shape:
        raise ValueError(f"preds {preds.shape[1:]} and labels {labels.shape} differ in shape")
    if not np.isfinite(preds).all():
        raise ValueError("predictions contain NaN or Inf")
    non0 = labels != 0
    if not non0.any():
        raise ValueError("every label is 0: the non-0 metrics (Acc-2, F1, Brier, NLL) are undefined")
    acc_has0, f1_has0 = _binary_scores(np.broadcast_to((labels >= 0)[:, None], preds.T.shape), preds.T >= 0)
    acc_non0, f1_non0 = _binary_scores(np.broadcast_to((labels[non0] > 0)[:, None], (non0.sum(), len(preds))),
                                       preds.T[non0] > 0)
    out = {"acc2_has0": acc_has0, "f1_has0": f1_has0, "acc2_non0": acc_non0, "f1_non0": f1_non0,
           "mae": mean_absolute_error(np.broadcast_to(labels[:, None], preds.T.shape), preds.T,
                                      multioutput="raw_values"),
           "corr": _correlation(preds, labels),
           "acc7": _rounded_accuracy(labels, preds, 3), "acc5": _rounded_accuracy(labels, preds, 2)}
    if p_pos is not None:
        p = np.clip(np.atleast_2d(np.asarray(p_pos, dtype=np.float64)), 0.0, 1.0)
        if p.shape != preds.shape:
            raise ValueError(f"p_pos {p.shape} and preds {preds.shape} differ in shape")
        out.update(_proper_scores(p[:, non0], labels[non0] > 0))
    counts = {"n": int(len(labels)), "n_non0": int(non0.sum())}
    return [{**{k: float(out[k][i]) if k in out else 0.0 for k in METRIC_NAMES}, **counts} for i in range(len(preds))]


def sentiment_metrics(preds: np.ndarray, labels: np.ndarray, probs: np.ndarray | None = None,
                      p_pos: np.ndarray | None = None) -> dict:
    """Every metric of ``METRIC_NAMES`` and the counts ``COUNT_NAMES`` for ``preds (N,)`` against
    ``labels (N,)``.

    The probability scores (Brier, NLL, ECE and its band) use ``p_pos (N,)`` = P(positive), or the
    class probabilities ``probs (N, C)`` when it is not given (all 0.0 when neither is).
    """
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    if p_pos is None and probs is not None:
        p_pos = positive_probability(probs)
    return sentiment_metrics_many(preds[None], labels, None if p_pos is None else np.asarray(p_pos).reshape(1, -1))[0]


def mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and (population) std over seeds of the metrics every seed has; counts stay ints, no std."""
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]  # a resumed older seed may lack some
    arr = {k: np.array([m[k] for m in per_seed], dtype=np.float64) for k in keys}
    mean = {k: int(round(v.mean())) if k in COUNT_NAMES else float(v.mean()) for k, v in arr.items()}
    return mean, {k: float(v.std()) for k, v in arr.items() if k not in COUNT_NAMES}
