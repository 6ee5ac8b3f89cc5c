"""Post-hoc calibration fitted on the validation split only, conditioned on presence.

How far a prediction can be trusted depends on which modalities are present, and on new videos
more than on the training ones (feature extractors are often trained on the training videos).
So each presence pattern (T, A, V, TA, TV, AV, TAV) gets, fitted on the validation split fused
under that pattern:

* a temperature for the class head (minimising the negative log-likelihood), and
* an affine map ``a * score + b`` (``a >= 0``) of the sentiment score (least squares): a pattern
  whose score carries no signal on validation videos is shrunk toward the validation mean
  instead of voicing its training-set confidence.

Pattern ``i`` of a presence row is ``T + 2A + 4V - 1`` (see ``evaluate.presence_patterns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from datasets import SUBSETS, Split, subset_masks
from training.evaluate import encode_split, fuse_split, presence_patterns


@dataclass
class Calibration:
    """``temperatures (7,)`` and ``score_affine (7, 2)`` (a, b) per presence pattern."""

    temperatures: np.ndarray = field(default_factory=lambda: np.ones(7))
    score_affine: np.ndarray = field(default_factory=lambda: np.tile([1.0, 0.0], (7, 1)))

    def apply(self, score: np.ndarray, logits: np.ndarray, presence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ``(score (N,), logits (N, C))`` for rows with ``presence (N, 3)``."""
        k = presence_patterns(presence)
        a, b = self.score_affine[k, 0], self.score_affine[k, 1]
        return np.clip(a * score + b, -3.0, 3.0), logits / self.temperatures[k, None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"temperatures": torch.as_tensor(self.temperatures, dtype=torch.float64),
                "score_affine": torch.as_tensor(self.score_affine, dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, d: dict | None) -> Calibration:
        """From ``state_dict()`` (tensors on any device, arrays or lists); none: the identity."""
        if not d:
            return cls()

        def host(v) -> np.ndarray:
            return np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=np.float64)

        cal = cls(host(d["temperatures"]), host(d["score_affine"]))
        if cal.temperatures.shape != (7,) or cal.score_affine.shape != (7, 2):
            raise ValueError(f"calibration state has shapes {cal.temperatures.shape} and {cal.score_affine.shape}, "
                             "expected (7,) and (7, 2)")
        return cal


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the NLL of ``targets (N,)`` under ``logits (N, C)``."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(z)), targets].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def fit_score_affine(score: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` with ``a >= 0`` mapping ``score`` to ``labels``."""
    score = np.asarray(score, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    var = score.var()
    a = max(0.0, float(np.mean((score - score.mean()) * (labels - labels.mean())) / var)) if var > 0 else 0.0
    return a, float(labels.mean() - a * score.mean())


def fit_calibration(model: nn.Module, valid: Split, num_classes: int, batch_size: int, device: torch.device,
                    temperature: bool = True, score: bool = True) -> Calibration:
    """Fit the per-pattern calibration on ``valid`` (never on test)."""
    from modules.losses import labels_to_classes

    states = encode_split(model, valid, batch_size, device)
    targets = labels_to_classes(torch.from_numpy(valid.labels), num_classes).numpy()
    cal = Calibration()
    for name in SUBSETS:
        masks = subset_masks(valid.n, name)
        k = presence_patterns(masks[:1])[0]
        fused = fuse_split(model, states, masks, device)
        if temperature:
            cal.temperatures[k] = fit_temperature(fused.logits, targets)
        if score:
            cal.score_affine[k] = fit_score_affine(fused.score, valid.labels)
    return cal
