"""The one-directional LSTM runs of a forward, all at once, and optionally stacked as one
block-diagonal LSTM over their concatenated inputs.

``run_lstms`` runs every LSTM run of a forward (two directions each of text, audio and vision) as one
piece that ``torch.compile`` leaves out of its graphs: traced, torch decomposes an LSTM on CUDA
into small ops per step instead of one cuDNN call, and inductor fails on the CPU's
``mkldnn_rnn_layer``. One piece instead of one per run: the compiled forward breaks once, not six
times.

Stacked (``--stack_lstm``), the runs of equal length become a single LSTM whose ``sum(u_k)`` units
hold every run's units side by side: its weights are block-diagonal, so no run's gates ever read
another's input or state, and its per-step states split back into each run's, equal to the separate
runs up to rounding. The steps then run once per distinct length instead of once per run, at ``K``
times the arithmetic of the recurrent product (the zero blocks are multiplied too). Measured at the
MOSEI shape it is slower on the CPU (0.66x) and on an H200 without compilation (0.39x): cuDNN runs
the wide block-diagonal recurrence slower than the separate narrow ones (``bench/README.md``).

Weights follow ``torch.nn.LSTM``: per stream ``(w_ih (4u, D), w_hh (4u, u), b_ih (4u,), b_hh (4u,))``
with the gates stacked in the order input, forget, cell, output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

GATES = 4  # nn.LSTM's gate blocks per weight: input, forget, cell, output


def lstm(x: Tensor, weights: Sequence[Tensor], train: bool) -> Tensor:
    """One one-directional, one-layer LSTM from zero state: ``x (B, L, D) -> per-step states (B, L, u)``."""
    zeros = x.new_zeros(1, x.shape[0], weights[1].shape[1])
    return torch.lstm(x, (zeros, zeros), list(weights), True, 1, 0.0, train, False, True)[0]


@functools.lru_cache(maxsize=64)
def _layout(shapes: tuple[tuple[tuple[int, ...], ...], ...], device: torch.device) -> Tensor:
    """Where each entry of ``block_diagonal_weights``' output comes from: an index into the K streams'
    weights flattened and concatenated in ``weights[k][i]`` order, followed by one 0 entry."""
    sizes = [math.prod(shape) for w in shapes for shape in w]
    starts = np.cumsum([0, *sizes])[:-1].reshape(len(shapes), 4)  # where weights[k][i] begins
    units = [w[1][1] for w in shapes]
    rows = np.cumsum([0, *units])
    parts = []
    for i, cols in enumerate(([w[0][1] for w in shapes], units, None, None)):  # w_ih, w_hh, b_ih, b_hh
        out = np.full((GATES, rows[-1], 1 if cols is None else sum(cols)), sum(sizes), dtype=np.int64)
        at = np.cumsum([0, *(cols or [])])  # each stream's first column (the biases have one, shared)
        for k, u in enumerate(units):
            c = 1 if cols is None else cols[k]
            first = 0 if cols is None else at[k]
            out[:, rows[k]:rows[k] + u, first:first + c] = starts[k, i] + np.arange(GATES * u * c).reshape(GATES, u, c)
        parts.append(out.reshape(-1))
    return torch.from_numpy(np.concatenate(parts)).to(device)


def block_diagonal_weights(weights: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """The weights of K LSTMs ``weights[k] = (w_ih, w_hh, b_ih, b_hh)`` as those of one LSTM of
    ``U = sum(u_k)`` units over the inputs concatenated in order: ``(w_ih (4U, sum(D_k)),
    w_hh (4U, U), b_ih (4U,), b_hh (4U,))``, each gate block block-diagonal over the streams
    (gate g of every stream, then gate g + 1). One gather from the streams' concatenated weights,
    so its gradient reaches each stream's own weights, never the zero blocks."""
    shapes = tuple(tuple(tuple(p.shape) for p in w) for w in weights)
    flat = torch.cat([p.reshape(-1) for w in weights for p in w] + [weights[0][0].new_zeros(1)])
    joint = flat[_layout(shapes, flat.device)]
    U, D = sum(w[1].shape[1] for w in weights), sum(w[0].shape[1] for w in weights)
    w_ih, w_hh, b_ih, b_hh = joint.split([GATES * U * D, GATES * U * U, GATES * U, GATES * U])
    return [w_ih.view(GATES * U, D), w_hh.view(GATES * U, U), b_ih, b_hh]


@torch.compiler.disable  # all the runs of a forward as one piece left out of compiled graphs (see above)
def run_lstms(inputs: Sequence[Tensor], weights: Sequence[Sequence[Tensor]], train: bool,
              stack: bool = False) -> list[Tensor]:
    """``[lstm(inputs[k], weights[k], train) for k]``; with ``stack``, the streams of equal length run
    as one LSTM (``block_diagonal_weights``).

    ``inputs[k] (B, L_k, D_k)`` share ``B`` and dtype; returns the per-step states ``(B, L_k, u_k)``
    in the order given (stacked: equal to the separate runs up to rounding).
    """
    if not stack:
        return [lstm(x, w, train) for x, w in zip(inputs, weights)]
    out: list[Tensor | None] = [None] * len(inputs)
    for length in dict.fromkeys(x.shape[1] for x in inputs):  # each distinct length once, in order
        group = [k for k, x in enumerate(inputs) if x.shape[1] == length]
        if len(group) == 1:
            out[group[0]] = lstm(inputs[group[0]], weights[group[0]], train)
            continue
        joint = lstm(torch.cat([inputs[k] for k in group], dim=-1),
                     block_diagonal_weights([weights[k] for k in group]), train)
        for k, part in zip(group, joint.split([weights[k][1].shape[1] for k in group], dim=-1)):
            out[k] = part
    return out  # type: ignore[return-value]
