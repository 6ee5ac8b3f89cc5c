"""Loss functions: task (regression + focal label-smoothing classification), self-distillation,
VAE, InfoNCE.

Conventions: ``presence (B, M)`` bool, True = present; every loss returns a scalar tensor and
reduces by the mean over the samples (or sample-modality pairs) that count.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from datasets.classes import labels_to_classes


def regression_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Mean absolute (``"l1"``) or squared (``"mse"``) error of ``pred (B,)`` vs ``target (B,)``."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"reg_loss must be 'l1' or 'mse', got {kind!r}")


class FocalLabelSmoothingLoss(nn.Module):
    """Focal loss against label-smoothed targets.

    With ``p = softmax(logits)`` and the smoothed target ``q = (1 - s) * onehot(y) + s / C``::

        loss = mean_b  -sum_c q_c * (1 - p_c) ** gamma * log p_c

    ``gamma = 0`` gives label-smoothing cross-entropy; ``s = 0`` gives the focal loss
    ``-(1 - p_y) ** gamma * log p_y``; both 0 give plain cross-entropy.
    forward(logits (B, C), target (B,) int64) -> scalar.
    """

    def __init__(self, gamma: float = 2.0, smoothing: float = 0.0):
        super().__init__()
        if gamma < 0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"need gamma >= 0 and smoothing in [0, 1), got {gamma}, {smoothing}")
        self.gamma = gamma
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=-1)
        num_classes = logits.shape[-1]
        # a comparison, not F.one_hot: one_hot checks the class range with a host sync
        onehot = target.unsqueeze(-1) == torch.arange(num_classes, device=target.device)
        q = onehot.to(log_p.dtype) * (1.0 - self.smoothing) + self.smoothing / num_classes
        if self.gamma > 0:
            log_p = (1.0 - log_p.exp()).clamp_min(0.0).pow(self.gamma) * log_p
        return -(q * log_p).sum(dim=-1).mean()


class FocalLoss(FocalLabelSmoothingLoss):
    """Focal loss ``mean_b -(1 - p_y) ** gamma * log p_y``; logits (B, C), target (B,) -> scalar."""

    def __init__(self, gamma: float = 2.0):
        super().__init__(gamma=gamma, smoothing=0.0)


class LabelSmoothingCrossEntropy(FocalLabelSmoothingLoss):
    """Cross-entropy against ``(1 - s) * onehot + s / C``; logits (B, C), target (B,) -> scalar."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__(gamma=0.0, smoothing=smoothing)


def task_loss(cfg: Any, out: dict[str, Any], labels: Tensor) -> dict[str, Tensor]:
    """The supervised terms, already weighted: ``{"reg": ..., "cls": ...}``.

    ``reg = cfg.reg_weight * regression_loss(out["score"], labels, cfg.reg_loss)`` and
    ``cls = cfg.cls_weight * FocalLabelSmoothingLoss(cfg.focal_gamma, cfg.label_smoothing)`` on
    ``out["logits"]`` against :func:`labels_to_classes`. A term whose weight is 0 is left out.
    When ``out`` has ``unimodal_scores (B, M)`` and ``presence (B, M)``, ``unimodal =
    cfg.unimodal_weight *`` the same regression loss of each present modality's own score,
    averaged over the present (sample, modality) pairs.
    """
    losses: dict[str, Tensor] = {}
    if cfg.reg_weight > 0:
        losses["reg"] = cfg.reg_weight * regression_loss(out["score"], labels, cfg.reg_loss)
    if cfg.cls_weight > 0:
        logits = out["logits"]
        target = labels_to_classes(labels, logits.shape[-1])
        losses["cls"] = cfg.cls_weight * FocalLabelSmoothingLoss(cfg.focal_gamma, cfg.label_smoothing)(
            logits, target)
    if "unimodal_scores" in out and cfg.unimodal_weight > 0:
        diff = out["unimodal_scores"] - labels.unsqueeze(-1)
        err = diff.abs() if cfg.reg_loss == "l1" else diff.pow(2)
        losses["unimodal"] = cfg.unimodal_weight * masked_pair_mean(err, out["presence"])
    return losses


def distillation_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], select: Tensor) -> Tensor:
    """Self-distillation of predictions made with modalities dropped toward full-modality ones.

    Per sample: ``KL(softmax(teacher logits) || softmax(student logits)) + |score_s - score_t|``;
    the teacher's outputs carry no gradient. ``student/teacher`` hold ``score (B,)`` and
    ``logits (B, C)``; ``select (B,)`` bool picks the samples that count (those that lost a
    modality). Returns the mean over the selected samples (0, with zero gradient, if none is), with no
    host synchronization: the unselected samples are weighted out, not indexed out.
    """
    def picked(x: Tensor) -> Tensor:  # unselected rows as zeros: a non-finite one reaches no term of the loss
        return torch.where(select.view(-1, *[1] * (x.dim() - 1)), x.float(), 0.0)

    t_logits, s_logits = picked(teacher["logits"].detach()), picked(student["logits"])
    kl = F.kl_div(F.log_softmax(s_logits, dim=-1), F.log_softmax(t_logits, dim=-1), log_target=True,
                  reduction="none").sum(dim=-1)
    l1 = (picked(student["score"]) - picked(teacher["score"].detach())).abs()
    return torch.where(select, kl + l1, 0.0).sum() / select.sum().clamp_min(1)


# ---- VAE -------------------------------------------------------------------------------------


def kl_warmup(epoch: int, warmup_epochs: int) -> float:
    """KL weight multiplier: linear from 0 at epoch 0 to 1 at ``epoch >= warmup_epochs`` (0-based
    epochs; ``warmup_epochs <= 0`` gives 1 from the start)."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / warmup_epochs)))


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` summed over the last dim: ``(..., H) -> (...)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def reconstruction_loss(recon: list[Tensor], target: list[Tensor], presence: Tensor) -> Tensor:
    """Mean over present (sample, modality) pairs of the feature-averaged squared error.

    ``recon[m], target[m] (B, D_m)``; ``presence (B, M)``. Missing pairs count for nothing
    (neither in the sum nor in the count).
    """
    err = torch.stack([(r - t).pow(2).mean(dim=-1) for r, t in zip(recon, target)], dim=-1)  # (B, M)
    return masked_pair_mean(err, presence)


def kl_loss(mu: Tensor, logvar: Tensor, presence: Tensor) -> Tensor:
    """Mean over present (sample, modality) pairs of :func:`gaussian_kl`; ``mu, logvar (B, M, H)``."""
    return masked_pair_mean(gaussian_kl(mu, logvar), presence)


def masked_pair_mean(values: Tensor, presence: Tensor) -> Tensor:
    """Mean of ``values (B, M)`` over the True entries of ``presence (B, M)`` (absent: ignored)."""
    values = torch.where(presence, values, torch.zeros_like(values))
    return values.sum() / presence.sum().clamp_min(1)


# ---- contrastive ---------------------------------------------------------------------------


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float = 0.1, keep: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of paired rows ``a, b (..., N, P)`` (row i of a matches row i of b), one loss
    per leading index: returns ``(...)`` (a scalar for ``(N, P)`` inputs).

    Rows are L2-normalised; ``logits = a @ b.T / temperature``;
    ``loss = (CE(logits, arange) + CE(logits.T, arange)) / 2``, each CE averaged over the rows.
    ``keep (..., N)`` bool, if given, restricts everything to the kept rows (equal to selecting them
    first, without a host sync): other rows are neither anchors nor negatives and get no gradient;
    with no kept row the loss is 0.
    """
    if keep is not None:  # dropped rows are zeroed first, so whatever they hold (even NaN) cannot leak
        a, b = (torch.where(keep[..., None], x, torch.zeros_like(x)) for x in (a, b))
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.transpose(-1, -2) / temperature  # (..., N, N)
    n = a.shape[-2]
    if keep is not None:  # a dropped row keeps only its own diagonal entry: its CE is exactly 0, no gradient
        eye = torch.eye(n, dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(~((keep[..., :, None] & keep[..., None, :]) | eye), float("-inf"))
    # CE(logits, arange) of row i is logsumexp(row i) - logits[i, i]; written with the diagonal, not
    # cross_entropy's gather of the targets: torch 2.11's inductor generated C++ that did not compile
    # (an undeclared index in a transposed load) for that gather on AVX2/AVX-512 CPUs
    ce = logits.logsumexp(-1) + logits.logsumexp(-2) - 2 * logits.diagonal(dim1=-2, dim2=-1)  # (..., N)
    if keep is None:
        return 0.5 * ce.mean(-1)
    return 0.5 * ce.sum(-1) / keep.sum(-1).clamp_min(1)


class ModalityContrastiveLoss(nn.Module):
    """Cross-modal InfoNCE over every modality pair, on the samples where both are present.

    Each modality has its own projection head ``Linear(H, H) - GELU - Linear(H, P)``. For a pair
    (i, j) only the rows with both modalities present take part, and a pair with fewer than 2
    such rows is skipped. The loss is the mean of :func:`symmetric_info_nce` over the pairs that
    count (0 if none does). No host sync: absent rows are masked, not selected.

    forward(embeddings (B, M, H), presence (B, M) bool) -> scalar.
    """

    def __init__(self, hidden_dim: int, num_modalities: int = 3, proj_dim: int = 64, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, proj_dim))
            for _ in range(num_modalities)
        )
        self.pairs = list(itertools.combinations(range(num_modalities), 2))  # (i, j), i < j

    def forward(self, embeddings: Tensor, presence: Tensor) -> Tensor:
        projected = [head(embeddings[:, m]) for m, head in enumerate(self.heads)]
        # stacked from the list: gathering them with index_select instead crashed inductor's CPU code
        # in the backward under --compile (torch 2.13: heap corruption)
        pairs = self.pairs
        both = torch.stack([presence[:, i] & presence[:, j] for i, j in pairs])  # (K, B)
        terms = symmetric_info_nce(torch.stack([projected[i] for i, _ in pairs]),
                                   torch.stack([projected[j] for _, j in pairs]),
                                   self.temperature, keep=both)  # every pair in one batched call: (K,)
        counts = both.sum(-1) >= 2  # a tensor: no host sync
        total = torch.where(counts, terms, torch.zeros_like(terms)).sum()
        return total / counts.sum().clamp_min(1)
