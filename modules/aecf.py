"""AECF: adaptive entropy-gated curriculum masking of attention over modalities.

A drop-in API in the shape of the ``aecf`` package README::

    fusion_query, pool = create_fusion_pool(embed_dim=512, num_modalities=3, mask_prob=0.15)
    query = fusion_query.expand(batch_size, -1, -1)          # (B, 1, D)
    fused = pool(query, modalities)                           # (B, 1, D)
    fused, info = pool(query, modalities, key_padding_mask=~presence, return_info=True)
    loss = loss + 0.01 * pool.curriculum_masking.entropy_loss(info["entropy"])

In training, :class:`CurriculumMasking` measures the normalised entropy of the attention weights
over the *present* modalities and drops modalities with a probability that grows as that entropy
falls below the target, so the model cannot lean on a single modality. The weights that survive
are renormalised and are the weights that combine the values. In eval mode it is the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CurriculumMasking", "MultimodalAttentionPool", "multimodal_attention_pool", "create_fusion_pool"]


class CurriculumMasking(nn.Module):
    """Entropy-driven random masking of attention weights over ``N`` keys (modalities).

    Args:
        base_mask_prob: masking probability of each present key when the entropy is at or
            above the target.
        entropy_target: target normalised entropy in [0, 1] (fraction of ``log(n_present)``).
        min_active: the least number of present keys kept (all present ones if fewer).

    With ``H`` the normalised entropy of a row over its present keys, each present key is
    dropped with probability ``p = min(1, base_mask_prob * (1 + relu(target - H) / target))``:
    ``base_mask_prob`` for a balanced row, up to twice that for a one-hot row. Draws use the
    global torch RNG (``torch.manual_seed`` makes them reproducible). If fewer than
    ``min(min_active, n_present)`` keys survive, randomly chosen present keys are restored.

    forward(weights (..., N), valid (..., N) bool or None) -> (masked weights (..., N), info).
    In training, masked weights are 0 on dropped and absent keys and sum to 1 over the kept ones;
    in eval, ``weights`` is returned unchanged. ``info``: ``entropy (...)`` normalised entropy
    (differentiable, feed it to :meth:`entropy_loss`), ``mask_rate (...)`` fraction of present
    keys dropped, ``target_entropy (...)``, ``keep_mask (..., N)`` bool.
    """

    def __init__(self, base_mask_prob: float = 0.15, entropy_target: float = 0.7, min_active: int = 1):
        super().__init__()
        if not 0.0 <= base_mask_prob <= 1.0:
            raise ValueError(f"base_mask_prob must lie in [0, 1], got {base_mask_prob}")
        if not 0.0 <= entropy_target <= 1.0:
            raise ValueError(f"entropy_target must lie in [0, 1], got {entropy_target}")
        if min_active < 1:
            raise ValueError(f"min_active must be >= 1, got {min_active}")
        self.base_mask_prob = base_mask_prob
        self.entropy_target = entropy_target
        self.min_active = min_active

    def compute_entropy(self, weights: Tensor, valid: Tensor | None = None) -> Tensor:
        """Normalised entropy of ``weights (..., N)`` over the valid keys -> ``(...)``; see
        :func:`normalized_entropy`."""
        return normalized_entropy(weights, valid)

    def mask_probability(self, entropy: Tensor) -> Tensor:
        """Drop probability of each present key given the normalised entropy ``(...)``."""
        if self.entropy_target <= 0:
            return torch.full_like(entropy, self.base_mask_prob)
        deficit = torch.relu(self.entropy_target - entropy.detach()) / self.entropy_target
        return (self.base_mask_prob * (1.0 + deficit)).clamp(0.0, 1.0)

    def sample_keep(self, weights: Tensor, valid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Draw the keep mask ``(..., N)`` bool (regardless of train/eval) and the info dict."""
        if valid is None:
            valid = torch.ones_like(weights, dtype=torch.bool)
        entropy = self.compute_entropy(weights, valid)
        p = self.mask_probability(entropy)
        u = torch.rand(weights.shape, device=weights.device)
        keep = valid & (u >= p.unsqueeze(-1))
        # Restore the present keys with the largest draws until min_active survive.
        n_valid = valid.sum(dim=-1, keepdim=True)
        need = n_valid.clamp_max(self.min_active)
        rank = u.masked_fill(~valid, -1.0).argsort(dim=-1, descending=True).argsort(dim=-1)
        keep = keep | (valid & (rank < need))
        dropped = (valid & ~keep).sum(dim=-1).to(weights.dtype)
        info = {
            "entropy": entropy,
            "mask_rate": dropped / n_valid.squeeze(-1).clamp_min(1).to(weights.dtype),
            "target_entropy": torch.full_like(entropy, self.entropy_target),
            "keep_mask": keep,
        }
        return keep, info

    def forward(self, weights: Tensor, valid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.training:
            if valid is None:
                valid = torch.ones_like(weights, dtype=torch.bool)
            entropy = self.compute_entropy(weights, valid)
            return weights, {
                "entropy": entropy,
                "mask_rate": torch.zeros_like(entropy),
                "target_entropy": torch.full_like(entropy, self.entropy_target),
                "keep_mask": valid,
            }
        keep, info = self.sample_keep(weights, valid)
        return renormalize(weights, keep), info

    def entropy_loss(self, entropy: Tensor) -> Tensor:
        """Mean squared shortfall of the normalised entropy below the target (0 when at/above)."""
        entropy = torch.nan_to_num(entropy, nan=0.0)
        return torch.relu(self.entropy_target - entropy).pow(2).mean()

    def extra_repr(self) -> str:
        return (f"base_mask_prob={self.base_mask_prob}, entropy_target={self.entropy_target}, "
                f"min_active={self.min_active}")


def normalized_entropy(weights: Tensor, valid: Tensor | None = None) -> Tensor:
    """Normalised entropy ``H / log(n_valid)`` in [0, 1] of ``weights (..., N)`` -> ``(...)``.

    The weights are renormalised over the valid keys first (uniform if they sum to 0). Rows with
    a single valid key have nothing to balance and get 1. Zero weights contribute 0 and no
    gradient (``torch.xlogy`` on a safe copy), so one-hot rows give no NaN.
    """
    if valid is None:
        valid = torch.ones_like(weights, dtype=torch.bool)
    w = torch.where(valid, weights, torch.zeros_like(weights))
    total = w.sum(dim=-1, keepdim=True)
    n = valid.sum(dim=-1)
    uniform = valid.to(weights.dtype) / n.clamp_min(1).unsqueeze(-1).to(weights.dtype)
    w = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), uniform)
    safe = torch.where(w > 0, w, torch.ones_like(w))
    h = -torch.xlogy(safe, safe).sum(dim=-1)
    max_h = torch.log(n.clamp_min(2).to(weights.dtype))
    return torch.where(n > 1, h / max_h, torch.ones_like(h)).clamp(0.0, 1.0)


def renormalize(weights: Tensor, keep: Tensor) -> Tensor:
    """Zero the weights where ``keep`` is False and rescale the rest to sum 1 (uniform over the
    kept keys when their weights sum to 0)."""
    masked = torch.where(keep, weights, torch.zeros_like(weights))
    total = masked.sum(dim=-1, keepdim=True)
    uniform = keep.to(weights.dtype) / keep.sum(dim=-1, keepdim=True).clamp_min(1).to(weights.dtype)
    return torch.where(total > 0, masked / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform)


def check_key_padding_mask(key_padding_mask: Tensor | None) -> None:
    """Raise ValueError naming the rows of ``key_padding_mask (B, N)`` (True = ignore) that ignore
    every key. One host sync (none without a mask); the rows are looked up only on error."""
    if key_padding_mask is None:
        return
    empty = key_padding_mask.bool().all(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"row(s) {','.join(map(str, rows))} of key_padding_mask mask every key")


def _masked_attention(scores: Tensor, valid: Tensor, curriculum_masking: CurriculumMasking | None,
                      training: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """``scores (B, h, Lq, N)``, ``valid (B, N)`` -> (weights (B, h, Lq, N), info).

    Softmax over the valid keys (every row needs one: see :func:`check_key_padding_mask`); in
    training with curriculum masking, the keep mask is drawn from the head-averaged weights (one
    draw per sample and query, shared by the heads) and the softmax is taken again over the kept
    keys only, which equals renormalising the kept weights.
    """
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    mean_w = weights.mean(dim=1)  # (B, Lq, N)
    valid_q = valid[:, None, :].expand_as(mean_w)
    if training and curriculum_masking is not None:
        keep, info = curriculum_masking.sample_keep(mean_w, valid_q)
        weights = torch.softmax(scores.masked_fill(~keep[:, None], float("-inf")), dim=-1)
    else:
        entropy = normalized_entropy(mean_w, valid_q)
        info = {"entropy": entropy, "mask_rate": torch.zeros_like(entropy), "keep_mask": valid_q}
        if curriculum_masking is not None:
            info["target_entropy"] = torch.full_like(entropy, curriculum_masking.entropy_target)
    info["attention_weights"] = mean_w
    info["masked_attention_weights"] = weights.mean(dim=1)
    return weights, info


class MultimodalAttentionPool(nn.Module):
    """Multi-head attention pooling of modality tokens with optional curriculum masking.

    forward(query (B, Lq, D), key (B, N, D), value (B, N, D) or None (= key),
    key_padding_mask (B, N) bool or None (True = ignore that key, e.g. a missing modality),
    return_info=False, use_checkpoint=False, check_mask=True) -> output (B, Lq, D) [, info].
    A row that ignores every key is an error (one host sync per call to find out); a caller that
    has already checked its mask passes ``check_mask=False`` and saves that sync.
    With ``batch_first=False`` the tensors are ``(L, B, D)`` instead.

    Ignored keys get exactly zero attention. In training the curriculum mask (if any) drops
    further keys and the renormalised masked weights combine the values. ``info``: ``entropy
    (B, Lq)`` normalised attention entropy before masking (differentiable), ``mask_rate (B, Lq)``,
    ``target_entropy (B, Lq)``, ``keep_mask (B, Lq, N)``, ``attention_weights (B, Lq, N)`` and
    ``masked_attention_weights (B, Lq, N)`` (head-averaged). ``use_checkpoint`` recomputes the
    attention in backward (``torch.utils.checkpoint``, same RNG draws, same results).
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, dropout: float = 0.0, bias: bool = True,
                 curriculum_masking: CurriculumMasking | None = None, batch_first: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a positive multiple of num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.curriculum_masking = curriculum_masking
        self.q_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.k_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.v_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, return_info: bool = False,
                use_checkpoint: bool = False, check_mask: bool = True) -> Tensor | tuple[Tensor, dict[str, Any]]:
        if check_mask:
            check_key_padding_mask(key_padding_mask)
        if value is None:
            value = key
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if use_checkpoint and torch.is_grad_enabled():
            out, info = checkpoint(self._attend, query, key, value, key_padding_mask, use_reentrant=False)
        else:
            out, info = self._attend(query, key, value, key_padding_mask)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, info) if return_info else out

    def _attend(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        B, Lq, D = query.shape
        N = key.shape[1]
        nh, hd = self.num_heads, D // self.num_heads
        q = self.q_proj(query).view(B, Lq, nh, hd).transpose(1, 2)
        k = self.k_proj(key).view(B, N, nh, hd).transpose(1, 2)
        v = self.v_proj(value).view(B, N, nh, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, Lq, N)
        valid = (torch.ones(B, N, dtype=torch.bool, device=key.device) if key_padding_mask is None
                 else ~key_padding_mask.bool())
        weights, info = _masked_attention(scores, valid, self.curriculum_masking, self.training)
        out = (self.dropout(weights) @ v).transpose(1, 2).reshape(B, Lq, D)
        return self.out_proj(out), info

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, "
                f"curriculum_masking={self.curriculum_masking is not None}")


def multimodal_attention_pool(query: Tensor, modalities: Tensor, curriculum_masking: CurriculumMasking | None = None,
                              training: bool = False, key_padding_mask: Tensor | None = None) -> Tensor:
    """Parameter-free attention pooling: ``query (B, Lq, D)`` over ``modalities (B, N, D)``.

    Single head, keys = values = ``modalities``, scaled dot-product scores; ``key_padding_mask
    (B, N)`` True ignores a key. With ``training`` and a curriculum mask, the masked renormalised
    weights combine the values. Returns ``(B, Lq, D)``.
    """
    check_key_padding_mask(key_padding_mask)
    B, N, D = modalities.shape
    scores = (query @ modalities.transpose(-2, -1)).unsqueeze(1) / math.sqrt(D)  # (B, 1, Lq, N)
    valid = (torch.ones(B, N, dtype=torch.bool, device=modalities.device) if key_padding_mask is None
             else ~key_padding_mask.bool())
    weights, _ = _masked_attention(scores, valid, curriculum_masking, training)
    return weights.squeeze(1) @ modalities


def create_fusion_pool(embed_dim: int, num_modalities: int, mask_prob: float = 0.15,
                       **kwargs: Any) -> tuple[nn.Parameter, MultimodalAttentionPool]:
    """A learned fusion query ``(1, 1, D)`` and a :class:`MultimodalAttentionPool` with curriculum masking.

    ``entropy_target`` and ``min_active`` in ``kwargs`` go to :class:`CurriculumMasking`
    (``min_active`` is capped at ``num_modalities``); the rest to the pool.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    masking = CurriculumMasking(
        base_mask_prob=mask_prob,
        entropy_target=kwargs.pop("entropy_target", 0.7),
        min_active=min(kwargs.pop("min_active", 1), num_modalities),
    )
    fusion_query = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
    return fusion_query, MultimodalAttentionPool(embed_dim, curriculum_masking=masking, **kwargs)
