"""Length-aware pooling of padded sequences."""

from __future__ import annotations

import torch
from torch import Tensor


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B,)`` true lengths -> ``(B, max_len)`` bool, True on steps ``< length``.

    Lengths are clamped to ``[1, max_len]`` so a sequence always keeps one step.
    """
    lengths = lengths.clamp(1, max_len)
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x (B, L, D)`` over the steps where ``mask (B, L)`` is True -> ``(B, D)``.

    Masked steps never contribute, whatever they hold.
    """
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
