"""Uncertainty-weighted fusion of the modality latents into one proxy vector.

Shapes: ``M`` modalities (3, T/A/V order), ``H`` hidden size.
Inputs ``z, mu, std (B, M, H)`` and ``presence (B, M)`` bool (True = present, every row has at
least one True). A missing modality's logit is set to ``-inf`` before the softmax, so its weight
is exactly 0 and the present weights sum to 1. The caller is expected to have zeroed the states
of missing modalities; the fusion modules zero the inputs they feed to learned layers again, so
nothing of a missing modality can reach the output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_softmax(logits: Tensor, presence: Tensor) -> Tensor:
    """Softmax over the last dim with absent entries (``presence`` False) at exactly 0."""
    return torch.softmax(logits.masked_fill(~presence, float("-inf")), dim=-1)


def uncertainty_weights(std: Tensor, presence: Tensor, temperature: float = 1.0) -> Tensor:
    """``std (B, M, H)`` -> ``(B, M)`` softmax over modalities of ``(1 / mean std) / temperature``."""
    inv = 1.0 / std.mean(dim=-1).clamp_min(1e-6)
    return masked_softmax(inv / temperature, presence)


class UncertaintyWeightedFusion(nn.Module):
    """Inverse-uncertainty weighted mean of the modality latents (no learned parameters).

    forward(z, mu, std (B, M, H), presence (B, M)) -> (proxy (B, H), weights (B, M)), with
    ``weights = softmax_m((1 / mean_h std) / temperature)`` over the present modalities (absent: 0)
    and ``proxy = sum_m weights_m * z_m``.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, z: Tensor, mu: Tensor, std: Tensor, presence: Tensor) -> tuple[Tensor, Tensor]:
        weights = uncertainty_weights(std, presence, self.temperature)
        z = z * presence.unsqueeze(-1).to(z.dtype)
        return torch.einsum("bm,bmh->bh", weights, z), weights


class GatedUncertaintyFusion(nn.Module):
    """Blend of uncertainty weights and a learned gate: ``w = alpha * w_unc + (1 - alpha) * w_gate``.

    The gate is an MLP over the concatenated modality means (a missing modality's mean is zeroed
    first) and the presence bits, ``Linear(M * H + M, H) - GELU - Linear(H, M)``, whose logits go
    through the same masked softmax as the uncertainty weights. Both parts are 0 on missing
    modalities and sum to 1, so ``w`` does too.

    forward(z, mu, std (B, M, H), presence (B, M)) -> (proxy (B, H), weights (B, M)).
    """

    def __init__(self, hidden_dim: int, num_modalities: int = 3, alpha: float = 0.5,
                 temperature: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.alpha = alpha
        self.temperature = temperature
        self.gate = nn.Sequential(
            nn.Linear(num_modalities * hidden_dim + num_modalities, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_modalities),
        )

    def forward(self, z: Tensor, mu: Tensor, std: Tensor, presence: Tensor) -> tuple[Tensor, Tensor]:
        keep = presence.unsqueeze(-1).to(z.dtype)
        w_unc = uncertainty_weights(std, presence, self.temperature)
        gate_in = torch.cat([(mu * keep).flatten(1), presence.to(mu.dtype)], dim=-1)
        w_gate = masked_softmax(self.gate(gate_in), presence)
        weights = self.alpha * w_unc + (1.0 - self.alpha) * w_gate
        return torch.einsum("bm,bmh->bh", weights, z * keep), weights


def inverse_variance_std(std: Tensor, presence: Tensor) -> Tensor:
    """Per-sample std of the inverse-variance combination of the present modalities -> ``(B,)``.

    Each modality's variance is the mean over H of ``std ** 2``; the combined variance is
    ``1 / sum_present(1 / var_m)``.
    """
    precision = (1.0 / std.pow(2).mean(dim=-1).clamp_min(1e-12)) * presence.to(std.dtype)
    return precision.sum(dim=-1).clamp_min(1e-12).rsqrt()
