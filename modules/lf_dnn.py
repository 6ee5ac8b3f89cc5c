"""LF-DNN baseline (late fusion), as MMSA defines it.

One sub-network per modality (BatchNorm -> Dropout -> three Linear+ReLU layers) on the
length-pooled features, the three hidden vectors concatenated, then Dropout and a three-layer
post-fusion MLP. A missing modality enters as zeros, which is all a late-fusion model can do.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.base import MultimodalModel
from modules.pooling import length_mask, masked_mean
from modules.presence import MODALITIES, check_presence


class SubNet(nn.Module):
    """``(B, D_in) -> (B, H)``: BatchNorm, Dropout, three Linear+ReLU layers."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(dropout),
                                 nn.Linear(in_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LFDNN(MultimodalModel):
    """Late-fusion DNN.

    ``encode(batch)`` pools each modality by its true length: ``{m}_pooled (B, D_m)``.
    ``fuse(states, presence (B, 3))`` zeroes missing modalities' pooled features, runs the
    sub-networks and the post-fusion MLP; returns ``score (B,)`` in [-3, 3], ``logits (B, C)``,
    no auxiliary losses.
    """

    min_batch_size = 2  # BatchNorm

    def __init__(self, cfg, dims: dict[str, int]):
        super().__init__()
        h = cfg.hidden_dim
        self.subnets = nn.ModuleDict({m: SubNet(dims[m], h, cfg.dropout) for m in MODALITIES})
        self.post = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(3 * h, h), nn.ReLU(),
                                  nn.Linear(h, h), nn.ReLU())
        self.add_heads(h, cfg.num_classes)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {f"{m}_pooled": masked_mean(batch[m], length_mask(batch["lengths"][:, i], batch[m].shape[1]))
                for i, m in enumerate(MODALITIES)}

    def fuse(self, states: dict[str, torch.Tensor], presence: torch.Tensor) -> dict:
        check_presence(presence)
        keep = presence.to(states["text_pooled"])  # on the states' device and dtype
        hs = [self.subnets[m](states[f"{m}_pooled"] * keep[:, i:i + 1]) for i, m in enumerate(MODALITIES)]
        h = self.post(torch.cat(hs, dim=-1))
        return self.predict(h)

