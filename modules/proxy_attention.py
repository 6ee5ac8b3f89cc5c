"""The fused proxy queries every modality's per-step states with multi-head attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ProxyCrossModalAttention(nn.Module):
    """One cross-attention block: proxy ``(B, H)`` attends over the tokens of all modalities.

    Keys are the tokens plus a learned modality type embedding (so the attention knows which
    modality a step comes from); values are the tokens. A key is ignored when its step is padding
    or its modality is missing (``token_masks``), so a missing modality gets exactly zero
    attention. Post-norm residual block:
    ``p = LN(p + Drop(Attn(p, tokens)))``, ``p = LN(p + Drop(FFN(p)))``.

    Two stages, so a test set's keys and values are computed once and reused under many masks:
    ``project(m, tokens (B, L_m, H)) -> (keys, values)`` each ``(B, L_m, H)`` for modality index
    ``m`` (presence-free, done in the model's ``encode``), then
    ``forward(proxy (B, H), keys: list of M (B, L_m, H), values: list of M (B, L_m, H),
    token_masks: list of M bool (B, L_m), True = valid key) -> (refined proxy (B, H), modality
    attention mass (B, M))``, the mass being the head-averaged attention each modality's steps
    receive, summing to 1 per row. Every row needs at least one valid key. A modality missing
    from every row may be given as ``None`` in all three lists: nothing is computed for its
    steps and its mass is 0; the result equals that of passing it with every key masked, up to
    rounding (the softmax sums over fewer terms).

    Groups: ``proxy`` and ``token_masks`` may hold ``G * B`` rows against keys and values of ``B``
    rows: row ``g * B + b`` is query ``g`` of sample ``b`` (the same sample under G presence
    patterns), attending over sample ``b``'s keys with its own mask. Every group's scores come from
    the same batched products, so the keys and values are read once for all G.
    """

    def __init__(self, hidden_dim: int, num_heads: int = 4, num_modalities: int = 3, dropout: float = 0.0):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.type_embed = nn.Parameter(torch.randn(num_modalities, hidden_dim) * 0.02)
        self.q_proj = nn.Linear(hidden_dim, hidden_dim)
        self.k_proj = nn.Linear(hidden_dim, hidden_dim)
        self.v_proj = nn.Linear(hidden_dim, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, 2 * hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden_dim, hidden_dim))
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        # (nh, H) one-hot: which head each channel belongs to (a constant, not saved in checkpoints)
        head_channels = torch.repeat_interleave(torch.eye(num_heads), hidden_dim // num_heads, dim=1)
        self.register_buffer("head_channels", head_channels, persistent=False)

    def project(self, m: int, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``k_proj(tokens + type_embed[m])`` and values ``v_proj(tokens)``, each (B, L_m, H)."""
        return self.k_proj(tokens + self.type_embed[m]), self.v_proj(tokens)

    def forward(self, proxy: Tensor, keys: list[Tensor | None], values: list[Tensor | None],
                token_masks: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        GB, H = proxy.shape
        nh, hd = self.num_heads, H // self.num_heads
        used = [i for i, k in enumerate(keys) if k is not None]  # None: missing from every row, skipped
        B = keys[used[0]].shape[0]
        G = GB // B  # G groups of B queries share the keys and values (one per presence pattern)
        # the queries as a block-diagonal (B, H, G * nh): column g * nh + h holds group g's query of
        # head h in head h's channels
        q = (self.q_proj(proxy) / math.sqrt(hd)).unsqueeze(-1) * self.head_channels.t().to(proxy.dtype)
        q = q.view(G, B, H, nh).permute(1, 2, 0, 3).reshape(B, H, G * nh)
        # keys and values are read in their stored (B, L_m, H) layout, never transposed or copied:
        # every group's and head's scores in one batched product (B, L_m, H) @ (B, H, G * nh)
        scores = []
        for i in used:
            s = torch.bmm(keys[i], q)  # (B, L_m, G * nh); under autocast bmm casts both
            s = s.view(B, -1, G, nh).permute(2, 0, 3, 1).reshape(GB, nh, -1)  # (G * B, nh, L_m)
            scores.append(s.masked_fill(~token_masks[i][:, None, :], float("-inf")))
        sizes = [s.shape[-1] for s in scores]
        attn = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # (G * B, nh, L)
        out = proxy.new_zeros(GB, nh, H)
        for a, i in zip(self.dropout(attn).split(sizes, dim=-1), used):
            a = a.reshape(G, B, nh, -1).permute(1, 0, 2, 3).reshape(B, G * nh, -1)  # (B, G * nh, L_m)
            part = torch.bmm(a, values[i]).view(B, G, nh, H)  # every head's weights over all channels
            part = part.permute(1, 0, 2, 3).reshape(GB, nh, H)
            # a modality without a valid key contributes exactly 0, whatever its values hold
            out = out + torch.where(token_masks[i].any(dim=1)[:, None, None], part, 0.0)
        out = (out * self.head_channels.to(out.dtype)).sum(1)  # head h keeps its own channels: (G * B, H)

        p = self.norm1(proxy + self.dropout(self.out_proj(out)))
        p = self.norm2(p + self.dropout(self.ffn(p)))

        per_step = attn.mean(dim=1)  # (G * B, L)
        mass = dict(zip(used, (chunk.sum(dim=-1) for chunk in per_step.split(sizes, dim=-1))))
        return p, torch.stack([mass[i] if i in mass else proxy.new_zeros(GB) for i in range(len(keys))], dim=-1)
