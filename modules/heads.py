"""Prediction heads: the bounded sentiment score, and a trunk with a score and a class head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def bounded_score(x: Tensor) -> Tensor:
    """A score head's output ``(B, 1)`` -> the sentiment ``3 * tanh(x)`` ``(B,)`` in [-3, 3]."""
    return 3.0 * torch.tanh(x.squeeze(-1))


class SentimentHead(nn.Module):
    """``Linear(D, H) - GELU - Dropout`` trunk, then a score and a class head.

    forward(x (B, D)) -> (score (B,) = 3 * tanh(.) in [-3, 3], logits (B, num_classes)).
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden_dim, 1)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return bounded_score(self.score(h)), self.classifier(h)
