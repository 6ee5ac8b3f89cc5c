"""Post-hoc calibration fitted on the validation split only, conditioned on presence.

How far a prediction can be trusted depends on which modalities are present, and on new videos
more than on the training ones (feature extractors are often trained on the training videos).
So each presence pattern (T, A, V, TA, TV, AV, TAV) gets, fitted on the validation split fused
under that pattern:

* a temperature for the class head (minimising the negative log-likelihood);
* an affine map ``a * score + b`` (``a >= 0``) of the sentiment score (least squares): a pattern
  whose score carries no signal on validation videos is shrunk toward the validation mean
  instead of voicing its training-set confidence;
* a Platt map ``P(positive) = sigmoid(a * score + b)`` (``a >= 0``) of the raw score on the non-0
  samples, shrunk toward the fit pooled over all patterns: ``(n * own + m * pooled) / (n + m)``
  with ``m = PLATT_PRIOR`` samples, so a pattern with few validation samples leans on the pool;
* one blend weight ``w`` (pooled, in [0, 1]): ``P = w * P_score + (1 - w) * P_class``.

``source`` says which P(positive) the probability scores, ``calibration.png`` and the risk-coverage
curve use: ``score`` (the Platt map), ``class`` (the tempered class head) or ``blend``.

Pattern ``i`` of a presence row is ``T + 2A + 4V - 1`` (see ``evaluate.presence_patterns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from datasets import SUBSETS, Split, subset_masks
from datasets.classes import labels_to_classes, positive_probability
from training.evaluate import Evaluator, presence_patterns

PROBABILITY_SOURCES = ("score", "class", "blend")
PLATT_PRIOR = 20.0  # validation samples' worth of weight on the pooled Platt fit


@dataclass
class Calibration:
    """Per presence pattern: ``temperatures (7,)``, ``score_affine (7, 2)`` (a, b), ``platt (7, 2)``
    (a, b); pooled: ``blend`` weight of P_score; ``source`` of the reported P(positive)."""

    temperatures: np.ndarray = field(default_factory=lambda: np.ones(7))
    score_affine: np.ndarray = field(default_factory=lambda: np.tile([1.0, 0.0], (7, 1)))
    platt: np.ndarray = field(default_factory=lambda: np.tile([1.0, 0.0], (7, 1)))
    blend: float = 0.5
    source: str = "class"

    def apply(self, score: np.ndarray, logits: np.ndarray, presence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ``(score (N,), logits (N, C))`` for rows with ``presence (N, 3)``."""
        k = presence_patterns(presence)
        a, b = self.score_affine[k, 0], self.score_affine[k, 1]
        return np.clip(a * score + b, -3.0, 3.0), logits / self.temperatures[k, None]

    def positive_probability(self, score: np.ndarray, logits: np.ndarray, presence: np.ndarray,
                             source: str | None = None) -> np.ndarray:
        """P(positive) ``(N,)`` from the raw ``score (N,)`` and ``logits (N, C)`` (``source`` or ours)."""
        source = source or self.source
        k = presence_patterns(presence)
        p_class = positive_probability(softmax(logits / self.temperatures[k, None], axis=1))
        if source == "class":
            return p_class
        p_score = expit(self.platt[k, 0] * score + self.platt[k, 1])
        if source == "score":
            return p_score
        if source == "blend":
            return self.blend * p_score + (1.0 - self.blend) * p_class
        raise ValueError(f"unknown probability source {source!r}; expected one of {PROBABILITY_SOURCES}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain float64 tensors (``source`` as its index in ``PROBABILITY_SOURCES``)."""
        return {"temperatures": torch.as_tensor(self.temperatures, dtype=torch.float64),
                "score_affine": torch.as_tensor(self.score_affine, dtype=torch.float64),
                "platt": torch.as_tensor(self.platt, dtype=torch.float64),
                "blend": torch.tensor(float(self.blend), dtype=torch.float64),
                "source": torch.tensor(PROBABILITY_SOURCES.index(self.source))}

    @classmethod
    def from_state_dict(cls, d: dict | None) -> Calibration:
        """From ``state_dict()`` (tensors on any device, arrays or lists); none: the identity. One saved
        before the Platt maps reports the class head."""
        if not d:
            return cls()

        def host(v) -> np.ndarray:
            return np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=np.float64)

        cal = cls(host(d["temperatures"]), host(d["score_affine"]))
        if cal.temperatures.shape != (7,) or cal.score_affine.shape != (7, 2):
            raise ValueError(f"calibration state has shapes {cal.temperatures.shape} and {cal.score_affine.shape}, "
                             "expected (7,) and (7, 2)")
        if "platt" in d:
            cal.platt = host(d["platt"])
            cal.blend = float(host(d["blend"]))
            cal.source = PROBABILITY_SOURCES[int(host(d["source"]))]
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


def fit_platt(score: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` with ``a >= 0`` of ``P(positive) = sigmoid(a * score + b)``.

    A score that does not rank positives higher (``a < 0``), or one class only, keeps the base rate
    (``a = 0``, the base rate smoothed by one pseudo-sample per class)."""
    score = np.asarray(score, dtype=np.float64).reshape(-1, 1)
    positive = np.asarray(positive, dtype=bool)
    base = (0.0, float(logit((positive.sum() + 1.0) / (len(positive) + 2.0))))
    if positive.all() or not positive.any() or score.std() == 0:
        return base
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(score, positive)
    a = float(lr.coef_[0, 0])
    return (a, float(lr.intercept_[0])) if a >= 0 else base


def fit_blend(p_score: np.ndarray, p_class: np.ndarray, positive: np.ndarray) -> float:
    """The weight ``w`` in [0, 1] of ``w * p_score + (1 - w) * p_class`` minimising the NLL."""
    def nll(w: float) -> float:
        return float(log_loss(positive, np.clip(w * p_score + (1 - w) * p_class, 1e-12, 1 - 1e-12),
                              labels=[False, True]))

    return float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded").x)


def fit_probabilities(cal: Calibration, scores: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                      patterns: list[int]) -> Calibration:
    """Fit ``cal.platt`` and ``cal.blend`` in place from the raw ``scores (P, N)`` and ``logits (P, N, C)``
    of the same ``N`` samples fused under each presence pattern of ``patterns (P,)`` (after
    ``cal.temperatures`` is set); ``labels (N,)`` in [-3, 3]. Returns ``cal``."""
    non0 = np.asarray(labels) != 0
    y = np.asarray(labels)[non0] > 0
    s = np.asarray(scores, dtype=np.float64)[:, non0]
    pooled = np.array(fit_platt(s.reshape(-1), np.tile(y, len(patterns))))
    n = len(y)
    for i, k in enumerate(patterns):
        own = np.array(fit_platt(s[i], y))
        cal.platt[k] = (n * own + PLATT_PRIOR * pooled) / (n + PLATT_PRIOR)
    pres = np.concatenate([np.tile([(k + 1) & 1, (k + 1) >> 1 & 1, (k + 1) >> 2 & 1], (n, 1)).astype(bool)
                           for k in patterns])  # pattern k -> its presence row, see presence_patterns
    flat_s = s.reshape(-1)
    flat_l = np.asarray(logits, dtype=np.float64)[:, non0].reshape(len(flat_s), -1)
    p_score = cal.positive_probability(flat_s, flat_l, pres, "score")
    p_class = cal.positive_probability(flat_s, flat_l, pres, "class")
    cal.blend = fit_blend(p_score, p_class, np.tile(y, len(patterns)))
    return cal


def fit_calibration(evaluator: Evaluator, valid: Split, temperature: bool = True, score: bool = True,
                    probability: str = "class") -> Calibration:
    """Fit the per-pattern calibration of ``evaluator``'s model (its raw outputs) on ``valid`` (never on
    test); ``probability`` is the source of the reported P(positive) (one of ``PROBABILITY_SOURCES``)."""
    if probability not in PROBABILITY_SOURCES:
        raise ValueError(f"unknown probability source {probability!r}; expected one of {PROBABILITY_SOURCES}")
    targets = labels_to_classes(torch.from_numpy(valid.labels), evaluator.num_classes).numpy()
    cal = Calibration(source=probability)
    patterns, scores, logits = [], [], []
    all_masks = [subset_masks(valid.n, name) for name in SUBSETS]
    for masks, fused in zip(all_masks, evaluator.fuse_many(valid, all_masks, raw=True)):
        k = int(presence_patterns(masks[:1])[0])
        if temperature:
            cal.temperatures[k] = fit_temperature(fused.logits, targets)
        if score:
            cal.score_affine[k] = fit_score_affine(fused.score, valid.labels)
        patterns.append(k)
        scores.append(fused.score)
        logits.append(fused.logits)
    return fit_probabilities(cal, np.stack(scores), np.stack(logits), valid.labels, patterns)
