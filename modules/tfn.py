"""TFN baseline (Tensor Fusion Network, Zadeh et al. 2017), as MMSA defines it.

Sub-networks: text runs through a one-layer LSTM whose last hidden state is projected to
``d_t``; audio and vision are averaged over their true lengths (MMSA's ``need_normalized``) and
go through BatchNorm -> Dropout -> three Linear+ReLU layers to ``d_a`` and ``d_v``. The fusion
tensor is the outer product of ``[1; h_a]``, ``[1; h_v]`` and ``[1; h_t]``, flattened to
``(d_a + 1)(d_v + 1)(d_t + 1)``, which keeps every unimodal, bimodal and trimodal term; then
Dropout and a post-fusion MLP (two Linear+ReLU layers of width ``hidden_dim``) feed the heads.

Sizes follow ``hidden_dim`` H so the fusion tensor stays small on a CPU: text LSTM H,
``d_t = H / 4``, ``d_a = H / 16``, ``d_v = H / 8`` (at least 4 each; 32/8/16 at H = 128, a
fusion tensor of 33 * 9 * 17 = 5049 values).

Shapes and masking: ``encode(batch)`` never reads presence and returns ``text (B, Lt, Dt)``,
``text_lengths (B,)``, ``audio_pooled (B, Da)``, ``vision_pooled (B, Dv)``.
``fuse(states, presence (B, 3))`` zeroes the missing modalities' inputs (the text sequence, the
pooled audio/vision vectors), runs the sub-networks and the fusion, and returns ``score (B,)`` in
[-3, 3], ``logits (B, C)``, no auxiliary losses.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.base import MultimodalModel
from modules.lf_dnn import SubNet
from modules.pooling import length_mask, masked_mean
from modules.presence import check_presence


class TextSubNet(nn.Module):
    """``(B, L, D), lengths (B,) -> (B, out)``: LSTM over the true length, Dropout, Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.long().clamp(min=1, max=x.shape[1])
        out, _ = self.rnn(x[:, :int(lengths.max())])
        # the output at the last valid step is the state after exactly the valid steps (as packing gives)
        last = out[torch.arange(len(lengths), device=out.device), lengths - 1]
        return self.proj(self.dropout(last))


class TFN(MultimodalModel):
    """Tensor Fusion Network; see the module docstring for shapes and masking."""

    min_batch_size = 2  # BatchNorm

    def __init__(self, cfg, dims: dict[str, int]):
        super().__init__()
        h = cfg.hidden_dim
        self.d_t, self.d_a, self.d_v = max(4, h // 4), max(4, h // 16), max(4, h // 8)
        self.text_subnet = TextSubNet(dims["text"], h, self.d_t, cfg.dropout)
        self.audio_subnet = SubNet(dims["audio"], self.d_a, cfg.dropout)
        self.vision_subnet = SubNet(dims["vision"], self.d_v, cfg.dropout)
        fused = (self.d_t + 1) * (self.d_a + 1) * (self.d_v + 1)
        self.post = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fused, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.add_heads(h, cfg.num_classes)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        lengths = batch["lengths"]
        return {"text": batch["text"], "text_lengths": lengths[:, 0],
                "audio_pooled": masked_mean(batch["audio"], length_mask(lengths[:, 1], batch["audio"].shape[1])),
                "vision_pooled": masked_mean(batch["vision"], length_mask(lengths[:, 2], batch["vision"].shape[1]))}

    def fuse(self, states: dict[str, torch.Tensor], presence: torch.Tensor) -> dict:
        check_presence(presence)
        keep = presence.bool().to(states["text"].device)
        zero = lambda x, i: torch.where(keep[:, i].view(-1, *[1] * (x.dim() - 1)), x, torch.zeros_like(x))
        h_t = self.text_subnet(zero(states["text"], 0), states["text_lengths"])
        h_a = self.audio_subnet(zero(states["audio_pooled"], 1))
        h_v = self.vision_subnet(zero(states["vision_pooled"], 2))
        one = h_t.new_ones(h_t.shape[0], 1)
        h_a, h_v, h_t = (torch.cat([one, v], dim=1) for v in (h_a, h_v, h_t))
        fusion = torch.einsum("ba,bv,bt->bavt", h_a, h_v, h_t).flatten(1)
        h = self.post(fusion)
        return self.predict(h)
