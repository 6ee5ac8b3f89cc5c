"""Length-aware pooling of padded sequences."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    m = mask.to(x.dtype)
    # one batched product (B, 1, L) @ (B, L, D) instead of a (B, L, D) temporary
    return torch.bmm(m.unsqueeze(1), x).squeeze(1) / m.sum(dim=1, keepdim=True).clamp_min(1.0)


class _Reverse(torch.autograd.Function):
    """``x.gather(1, index)`` for an ``index`` that is its own inverse permutation of the steps, so
    the gradient is the same gather (no scatter-add into a zero tensor, the default gather backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        return x.gather(1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.gather(1, index), None


def _reversal(lengths: Tensor, max_len: int) -> Tensor:
    """(B, L, 1) step index that reverses each row's first ``lengths[b]`` steps and keeps the rest."""
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(steps < n, n - 1 - steps, steps).unsqueeze(-1)


def reverse_valid(x: Tensor, lengths: Tensor, index: Tensor | None = None) -> Tensor:
    """``x (B, L, D)`` with each row's first ``lengths[b]`` steps reversed, padding left in place.

    Its own inverse: ``reverse_valid(reverse_valid(x, n), n) == x``, and so is its gradient.
    ``index``: the (B, L, 1) reversal of these lengths when already made (``run_directions``).
    """
    index = _reversal(lengths, x.shape[1]) if index is None else index
    return _Reverse.apply(x, index.expand(-1, -1, x.shape[-1]))


def direction_inputs(x: Tensor, lengths: Tensor, directions: int) -> tuple[list[Tensor], Tensor | None]:
    """What each direction of a recurrence over ``x (B, L, D)`` reads, and the reversal index.

    Direction 0 reads ``x`` as is; direction 1 (if any) reads each row's valid steps reversed in
    place (:func:`reverse_valid`), so it too meets the padding only after them. Returns ``(inputs,
    index)``: one ``(B, L, D)`` per direction, and the (B, L, 1) reversal (None with one direction)
    that :func:`join_directions` reuses.
    """
    index = _reversal(lengths, x.shape[1]) if directions > 1 else None  # made once, used twice
    return [x if d == 0 else reverse_valid(x, lengths, index) for d in range(directions)], index


def join_directions(outs: Sequence[Tensor], lengths: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """The per-step states ``outs[d] (B, L, U)`` of each direction (:func:`direction_inputs`) in the
    original order -> ``(per_step (B, L, U * directions), final (B, U * directions))``: the backward
    states put back, and each direction's state after its last valid step (forward: at
    ``length - 1``; backward: after reading the first step, which it also holds at ``length - 1``
    of its own order)."""
    steps = torch.arange(outs[0].shape[1], device=outs[0].device).unsqueeze(0)
    last_step = (steps == (lengths - 1).unsqueeze(1)).unsqueeze(-1)  # (B, L, 1): one True per row
    # the one step selected by a mask (a product and a sum, whose gradient is a product)
    lasts = [(out * last_step.to(out.dtype)).sum(dim=1) for out in outs]
    outs = [out if d == 0 else reverse_valid(out, lengths, index) for d, out in enumerate(outs)]
    return torch.cat(list(outs), dim=-1), torch.cat(lasts, dim=-1)


def run_directions(directions: Sequence[Callable[[Tensor], Tensor]], x: Tensor,
                   lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run a causal recurrence per direction over a padded batch so padding never reaches a valid state.

    ``directions[d]`` maps what direction ``d`` reads (:func:`direction_inputs`: ``x (B, L, D)`` as
    is, then with each row's valid steps reversed) to its per-step states ``(B, L, U)``.
    ``lengths (B,)`` must lie in ``[1, L]``. Returns :func:`join_directions`' ``(per_step (B, L, U *
    directions), final (B, U * directions))``.
    """
    inputs, index = direction_inputs(x, lengths, len(directions))
    return join_directions([run(seq) for run, seq in zip(directions, inputs)], lengths, index)
