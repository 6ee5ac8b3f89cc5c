"""The class layout of the sentiment label: 2, 3 or 7 classes over scores in [-3, 3].

* 2: 0 negative (``label < 0``), 1 positive (``label >= 0``); centres -1, 1;
* 3: 0 negative (``< 0``), 1 neutral (``== 0``), 2 positive (``> 0``); centres -1, 0, 1;
* 7: the score clipped to [-3, 3] and rounded (half to even, like ``np.round``), shifted to 0..6
  (class 3 = 0); centres -3..3.

Read by the classification loss (``labels_to_classes``), the reported prediction of a class head
(its expected value over ``class_centres``) and the probability scores (``positive_probability``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

NUM_CLASSES = (2, 3, 7)


def _check(num_classes: int) -> None:
    if num_classes not in NUM_CLASSES:
        raise ValueError(f"num_classes must be 2, 3 or 7, got {num_classes}")


def labels_to_classes(labels: Tensor, num_classes: int) -> Tensor:
    """Sentiment scores in [-3, 3] ``(B,)`` -> class indices ``(B,)`` int64 (the layout above)."""
    _check(num_classes)
    if num_classes == 2:
        return (labels >= 0).long()
    if num_classes == 3:
        return (labels.sign() + 1).long()
    return (labels.clamp(-3.0, 3.0).round() + 3).long()


def class_centres(num_classes: int) -> np.ndarray:
    """The sentiment score of each class ``(C,)`` float64: a class head's prediction is
    ``probs @ class_centres(C)``."""
    _check(num_classes)
    return {2: np.array([-1.0, 1.0]), 3: np.array([-1.0, 0.0, 1.0]), 7: np.arange(-3.0, 4.0)}[num_classes]


def positive_probability(probs: np.ndarray) -> np.ndarray:
    """P(positive) ``(N,)`` float64 from class probabilities ``(N, C)``: C=2 (neg, pos), 3 (neg, neu,
    pos), 7 (-3..3).

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
