"""Sentiment metrics with MMSA's definitions (scikit-learn underneath) and top-label ECE.

has-0: ``pred >= 0`` vs ``label >= 0`` over every sample.
non-0: only samples with ``label != 0``; ``pred > 0`` vs ``label > 0``.
F1 is weighted F1. Acc-7 compares values rounded after clipping to [-3, 3]; Acc-5 (MMSA's
``Mult_acc_5``) after clipping to [-2, 2]. Every result also carries its sample counts ``n`` and
``n_non0`` (ints, ``COUNT_NAMES``).
ECE is the top-label expected calibration error (10 equal-width bins) of P(positive) on the
binary non-0 task.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

METRIC_NAMES = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc7", "ece", "acc5")
COUNT_NAMES = ("n", "n_non0")  # samples a result was computed on (all, label != 0); no spread over seeds


def positive_probability(probs: np.ndarray) -> np.ndarray:
    """P(positive) from class probabilities ``(N, C)``: C=2 (neg, pos), 3 (neg, neu, pos), 7 (-3..3).

    Neutral mass is left out: the binary non-0 task asks positive against negative.
    """
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    if c == 2:
        return probs[:, 1]
    if c not in (3, 7):
        raise ValueError(f"cannot map {c} classes to a binary probability")
    half = c // 2
    neg, pos = probs[:, :half].sum(1), probs[:, half + 1:].sum(1)
    return pos / np.clip(neg + pos, 1e-12, None)


def ece_score(p_pos: np.ndarray, positive: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE of binary predictions: confidence max(p, 1-p) in ``n_bins`` equal-width bins."""
    p_pos = np.asarray(p_pos, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if len(p_pos) == 0:
        return 0.0
    conf = np.maximum(p_pos, 1.0 - p_pos)
    correct = (p_pos >= 0.5) == positive
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def sentiment_metrics(preds: np.ndarray, labels: np.ndarray, probs: np.ndarray | None = None) -> dict:
    """Every metric of ``METRIC_NAMES`` and the counts ``COUNT_NAMES`` for ``preds (N,)`` against ``labels (N,)``.

    ``probs (N, C)`` are the classification head's probabilities for ECE (0.0 when absent).
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
        "ece": ece_score(positive_probability(probs)[non0], labels[non0] > 0) if probs is not None else 0.0,
        "acc5": accuracy_score(np.round(np.clip(labels, -2, 2)), np.round(np.clip(preds, -2, 2))),
    }
    return {**{k: float(v) for k, v in out.items()}, "n": int(len(labels)), "n_non0": int(non0.sum())}


def mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and (population) std over seeds of metric dicts with the same keys; counts stay ints, no std."""
    keys = per_seed[0].keys()
    arr = {k: np.array([m[k] for m in per_seed], dtype=np.float64) for k in keys}
    mean = {k: int(round(v.mean())) if k in COUNT_NAMES else float(v.mean()) for k, v in arr.items()}
    return mean, {k: float(v.std()) for k, v in arr.items() if k not in COUNT_NAMES}
