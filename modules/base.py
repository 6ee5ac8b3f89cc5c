"""The protocol every ``--model`` follows: encode once without presence, fuse under any mask.

``MultimodalModel`` is built as ``cls(cfg, dims)`` with ``dims`` the feature size of each modality
(``{"text": Dt, "audio": Da, "vision": Dv}``) and has two stages:

``encode(batch) -> states``
    ``batch`` holds ``text (B, Lt, Dt)``, ``audio (B, La, Da)``, ``vision (B, Lv, Dv)`` and
    ``lengths (B, 3)`` (true lengths, T/A/V order). ``encode`` must not read presence, so that a
    test set can be encoded once and fused under many masks. ``states`` is a dict of tensors
    whose first dimension is B (so the evaluator can slice and concatenate it).
``fuse(states, presence) -> out``
    ``presence (B, 3)`` bool, True = present, T/A/V order, on the states' device or on the host
    (the evaluator passes its per-pattern masks on the host, so a model may read them without a
    device sync); every row has at least one True (a row without raises ``ValueError``).
    ``out`` holds ``score (B,)`` (sentiment in [-3, 3]), ``logits (B, C)`` (classification head),
    ``losses`` (dict name -> scalar tensor, UNWEIGHTED auxiliary terms, training mode only; the
    trainer weights and schedules them, see ``training.trainer.AUX_WEIGHTS``) and ``diagnostics``
    (dict name -> tensor, logged to TensorBoard after a mean). A missing modality must never
    change an output.

A model whose class sets ``fuses_groups = True`` also takes, in eval mode, ``presence (G * B, 3)``
for states of ``B`` rows: the states fused under G presence blocks in one call, row ``g * B + b``
of every output being sample ``b`` under block ``g`` (the evaluator uses it for its pattern passes:
one call of many rows instead of one call per pattern).

``forward(batch, presence=None)`` is ``fuse(encode(batch), presence or batch["presence"])``.
The trainer, evaluation and report never branch on which model runs.
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

from modules.heads import bounded_score


class MultimodalModel(nn.Module, abc.ABC):
    """Base of every registered model: ``forward = fuse(encode(batch), presence)`` and the plain
    score/class heads the baselines share (``add_heads`` + ``predict``)."""

    fuses_groups = False  # True: eval-mode ``fuse`` accepts presence (G * B, 3) (see the module docstring)
    min_batch_size = 1  # 2 for a model with BatchNorm: a training batch of one row has no batch statistics

    @abc.abstractmethod
    def encode(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample states (first dim B) from the features and lengths; never reads presence."""

    @abc.abstractmethod
    def fuse(self, states: dict[str, Tensor], presence: Tensor) -> dict[str, Any]:
        """``score``, ``logits``, ``losses`` (unweighted) and ``diagnostics`` under ``presence (B, 3)``."""

    def forward(self, batch: dict[str, Tensor], presence: Tensor | None = None) -> dict[str, Any]:
        return self.fuse(self.encode(batch), batch["presence"] if presence is None else presence)

    def add_heads(self, width: int, num_classes: int) -> None:
        """A linear score head ``score_head (width -> 1)`` and class head ``cls_head (width -> C)``."""
        self.score_head = nn.Linear(width, 1)
        self.cls_head = nn.Linear(width, num_classes)

    def predict(self, h: Tensor) -> dict[str, Any]:
        """``h (B, width)`` -> the ``fuse`` output of a model without auxiliary terms: ``score (B,)``
        in [-3, 3], ``logits (B, C)``, empty ``losses`` and ``diagnostics``."""
        return {"score": bounded_score(self.score_head(h)), "logits": self.cls_head(h),
                "losses": {}, "diagnostics": {}}
