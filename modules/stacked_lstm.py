"""The one-directional LSTM runs of a forward, all at once, and optionally stacked as one
block-diagonal LSTM over their concatenated inputs.

``run_lstms`` runs every LSTM run of a forward (two directions each of text, audio and vision) as one
piece that ``torch.compile`` leaves out of its graphs: traced, torch decomposes an LSTM on CUDA
into small ops per step instead of one cuDNN call, and inductor fails on the CPU's
``mkldnn_rnn_layer``. One piece instead of one per run: the compiled forward breaks once, not six
times.

Stacked (``--stack_lstm``), runs of equal length become one LSTM whose units hold those of the runs
side by side: its weights are block-diagonal, so no run's gates ever read another's input or
state, and its per-step states split back into each run's, equal to the separate runs up to
rounding. A stacked LSTM has at most ``PERSISTENT_UNITS`` units (runs are grouped in order while
their units fit): up to there PyTorch runs a cuDNN LSTM with its persistent small-hidden kernel in
both directions of autograd (``CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H``: forward up to 192 units,
backward up to 128); above it, with cuDNN's standard per-step kernels. With the default
``--hidden_dim 128`` (64 units per direction) that pairs the directions of each modality: at the
MOSEI shape 3 runs (50, 500 and 500 steps) instead of 6 (2 of 50, 4 of 500). The zero blocks are
multiplied too: a pair does twice the arithmetic of the recurrent product. The first version,
without the cap, stacked the four 500-step runs into one of 256 units and measured 0.66x on the
CPU and 0.39x on an H200 without compilation (``bench/README.md``); by the same heuristics a
256-unit LSTM gets cuDNN's standard kernels there.

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
# the most units of a stacked LSTM: PyTorch's cuDNN path picks the persistent small-hidden LSTM kernel
# up to 128 units in the backward (192 in the forward; aten/src/ATen/native/cudnn/RNN.cpp, get_algo)
PERSISTENT_UNITS = 128


def lstm(x: Tensor, weights: Sequence[Tensor], train: bool) -> Tensor:
    """One one-directional, one-layer LSTM from zero state: ``x (B, L, D) -> per-step states (B, L, u)``
    in ``x``'s dtype, computed in float32 (the weights' dtype) even under autocast. Autocast would run it
    in float16 on CUDA whatever its own dtype (torch's rule for cuDNN RNNs) and in bfloat16 on the CPU,
    over up to 500 recurrent steps; float32 ran at 0.97x float16's speed in the compiled LSTM encoder
    at MOSEI's shape on an H200 (``bench/README.md``)."""
    with torch.autocast(x.device.type, enabled=False):
        zeros = x.new_zeros(1, x.shape[0], weights[1].shape[1], dtype=weights[0].dtype)
        out = torch.lstm(x.to(weights[0].dtype), (zeros, zeros), list(weights), True, 1, 0.0, train, False, True)[0]
    return out.to(x.dtype)


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


def stack_groups(lengths: Sequence[int], units: Sequence[int], max_units: int = PERSISTENT_UNITS) -> list[list[int]]:
    """Which runs ``run_lstms`` stacks: runs ``k`` of length ``lengths[k]`` and ``units[k]`` units, as
    groups of indices. Each distinct length in order of first appearance; its runs in order, a group
    taking the next run while their units stay within ``max_units`` (a wider run is alone)."""
    groups: list[list[int]] = []
    for length in dict.fromkeys(lengths):
        group: list[int] = []
        for k in (k for k, n in enumerate(lengths) if n == length):
            if group and sum(units[j] for j in group) + units[k] > max_units:
                groups.append(group)
                group = []
            group.append(k)
        groups.append(group)
    return groups


@torch.compiler.disable  # all the runs of a forward as one piece left out of compiled graphs (see above)
def run_lstms(inputs: Sequence[Tensor], weights: Sequence[Sequence[Tensor]], train: bool,
              stack: bool = False, max_units: int = PERSISTENT_UNITS) -> list[Tensor]:
    """``[lstm(inputs[k], weights[k], train) for k]``; with ``stack``, the runs of each ``stack_groups``
    group (equal length, at most ``max_units`` units together) run as one LSTM (``block_diagonal_weights``).

    ``inputs[k] (B, L_k, D_k)`` share ``B`` and dtype; returns the per-step states ``(B, L_k, u_k)``
    in the order given (stacked: equal to the separate runs up to rounding).
    """
    if not stack:
        return [lstm(x, w, train) for x, w in zip(inputs, weights)]
    with torch.autocast(inputs[0].device.type, enabled=False):  # as in ``lstm``: the joined inputs too
        return _run_stacked(inputs, weights, train, max_units)


def _run_stacked(inputs: Sequence[Tensor], weights: Sequence[Sequence[Tensor]], train: bool,
                 max_units: int) -> list[Tensor]:
    out: list[Tensor | None] = [None] * len(inputs)
    for group in stack_groups([x.shape[1] for x in inputs], [w[1].shape[1] for w in weights], max_units):
        if len(group) == 1:
            out[group[0]] = lstm(inputs[group[0]], weights[group[0]], train)
            continue
        joint = lstm(torch.cat([inputs[k] for k in group], dim=-1),
                     block_diagonal_weights([weights[k] for k in group]), train)
        for k, part in zip(group, joint.split([weights[k][1].shape[1] for k in group], dim=-1)):
            out[k] = part
    return out  # type: ignore[return-value]
