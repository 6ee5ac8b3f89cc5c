"""Post-hoc temperature scaling of the class head, fitted on the validation split only.

Confidence should fall when a strong modality is missing, so the temperature is conditioned on
which modalities are present: one temperature per presence pattern (T, A, V, TA, TV, AV, TAV),
each fitted by minimising the negative log-likelihood of the validation split fused under that
pattern. Pattern ``i`` is ``T + 2A + 4V - 1`` (see ``evaluate.presence_patterns``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from datasets import SUBSETS, Split, subset_masks
from training.evaluate import encode_split, fuse_split, presence_patterns


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


def fit_pattern_temperatures(model: nn.Module, valid: Split, num_classes: int, batch_size: int,
                             device: torch.device) -> np.ndarray:
    """Temperatures ``(7,)`` indexed by presence pattern, fitted on ``valid`` under each subset."""
    from modules.losses import labels_to_classes

    states = encode_split(model, valid, batch_size, device)
    targets = labels_to_classes(torch.from_numpy(valid.labels), num_classes).numpy()
    temps = np.ones(7)
    for name in SUBSETS:
        masks = subset_masks(valid.n, name)
        fused = fuse_split(model, states, masks, device)
        temps[presence_patterns(masks[:1])[0]] = fit_temperature(fused.logits, targets)
    return temps
