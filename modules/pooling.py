"""Length-aware pooling of padded sequences."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, L)`` bool, True on the first ``lengths[b]`` steps of each row."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, L, D)`` over the first ``lengths (B,)`` steps of each row -> ``(B, D)``.

    Steps past a row's length never contribute, whatever they hold.
    """
    mask = length_mask(lengths, x.shape[1]).to(x.dtype).unsqueeze(-1)
    return (x * mask).sum(1) / lengths.clamp(min=1).to(x.dtype).unsqueeze(-1)
