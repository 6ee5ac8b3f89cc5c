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
    ``project(m, tokens (B, L_m, H)) -> (keys, values)`` each channels-major ``(B, H, L_m)`` for
    modality index ``m`` (presence-free, done in the model's ``encode``; channels-major so that each
    head's scores and weighted values are plain batched products over its own channels), then
    ``forward(proxy (B, H), keys: list of M (B, H, L_m), values: list of M (B, H, L_m),
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

    def project(self, m: int, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``k_proj(tokens + type_embed[m])`` and values ``v_proj(tokens)``, each channels-major
        ``(B, H, L_m)`` = ``(B, nh, H / nh, L_m)`` head by head, made in that layout by the product
        itself (no transposed copy)."""
        def channels_major(linear: nn.Linear, x: Tensor) -> Tensor:  # linear(x) as (B, H, L)
            B, L, _ = x.shape
            return torch.baddbmm(linear.bias[:, None].expand(B, -1, L), linear.weight.expand(B, -1, -1),
                                 x.transpose(1, 2))
        return channels_major(self.k_proj, tokens + self.type_embed[m]), channels_major(self.v_proj, tokens)

    def forward(self, proxy: Tensor, keys: list[Tensor | None], values: list[Tensor | None],
                token_masks: list[Tensor | None]) -> tuple[Tensor, Tensor]:
        GB, H = proxy.shape
        nh, hd = self.num_heads, H // self.num_heads
        used = [i for i, k in enumerate(keys) if k is not None]  # None: missing from every row, skipped
        B = keys[used[0]].shape[0]
        G = GB // B  # G groups of B queries share the keys and values (one per presence pattern)
        # every group's query of head h of sample b in one block of rows: (B * nh, G, hd)
        q = (self.q_proj(proxy) / math.sqrt(hd)).view(G, B, nh, hd).permute(1, 2, 0, 3).reshape(B * nh, G, hd)
        # the masks as (B, 1, G, L_m), the layout of the scores (B, nh, G, L_m)
        valid = {i: token_masks[i].view(G, B, -1).transpose(0, 1).unsqueeze(1) for i in used}
        scores = []
        for i in used:
            L = keys[i].shape[-1]
            s = torch.bmm(q, keys[i].reshape(B * nh, hd, L))  # (B * nh, G, L); under autocast bmm casts both
            scores.append(s.view(B, nh, G, L).masked_fill(~valid[i], float("-inf")))
        sizes = [s.shape[-1] for s in scores]
        attn = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # (B, nh, G, L)
        out = proxy.new_zeros(B, nh, hd, G)
        for a, i in zip(self.dropout(attn).split(sizes, dim=-1), used):
            # (B * nh, hd, L_m) @ (B * nh, L_m, G): each head's values weighted by its own attention
            part = torch.bmm(values[i].reshape(B * nh, hd, -1), a.reshape(B * nh, G, -1).transpose(1, 2))
            # a modality without a valid key contributes exactly 0, whatever its values hold
            has_key = valid[i].any(dim=-1).view(B, 1, 1, G)
            out = out + torch.where(has_key, part.view(B, nh, hd, G), 0.0)
        out = out.permute(3, 0, 1, 2).reshape(GB, H)  # row g * B + b, heads side by side

        p = self.norm1(proxy + self.dropout(self.out_proj(out)))
        p = self.norm2(p + self.dropout(self.ffn(p)))

        per_step = attn.mean(dim=1).transpose(0, 1).reshape(GB, -1)  # (G * B, L), head-averaged
        mass = dict(zip(used, (chunk.sum(dim=-1) for chunk in per_step.split(sizes, dim=-1))))
        return p, torch.stack([mass[i] if i in mass else proxy.new_zeros(GB) for i in range(len(keys))], dim=-1)
