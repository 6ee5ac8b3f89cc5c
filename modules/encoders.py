"""Variational modality encoders: one sequence of features in, one Gaussian state out.

Both encoders map a zero-padded sequence ``x (B, L, D)`` with true lengths ``lengths (B,)`` to

* ``tokens (B, L, H)``: per-step states for attention (steps at or past the true length are 0),
* ``token_mask (B, L)`` bool: True on the valid steps,
* ``mu, logvar, std, z (B, H)``: the Gaussian posterior of the modality and a sample of it.

``logvar`` comes from a zero-initialised linear layer (std starts at 1) and is clamped to
[-10, 10]. ``z = mu + std * eps`` is sampled only in training and only when ``variational`` is
on; otherwise ``z = mu``. The encoders never look at modality presence: a missing modality is
encoded like any other and masked later by the fusion stage.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from modules.pooling import direction_inputs, join_directions, length_mask, masked_mean
from modules.stacked_lstm import run_lstms

LOGVAR_MIN = -10.0
LOGVAR_MAX = 10.0


class GaussianHead(nn.Module):
    """Pooled state ``h (B, H)`` -> ``mu, logvar, std, z`` each ``(B, H)``.

    The log-variance layer is zero-initialised (std = 1 at the start) and its output clamped to
    [-10, 10]. ``z`` is a reparameterised sample in training when ``variational`` is True, else
    ``mu``.
    """

    def __init__(self, hidden_dim: int, variational: bool = True):
        super().__init__()
        self.variational = variational
        self.mu = nn.Linear(hidden_dim, hidden_dim)
        self.logvar = nn.Linear(hidden_dim, hidden_dim)
        nn.init.zeros_(self.logvar.weight)
        nn.init.zeros_(self.logvar.bias)

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        mu = self.mu(h)
        logvar = self.logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
        std = torch.exp(0.5 * logvar)
        if self.training and self.variational:
            z = mu + std * torch.randn_like(std)
        else:
            z = mu
        return {"mu": mu, "logvar": logvar, "std": std, "z": z}


class VariationalMLPEncoder(nn.Module):
    """Per-step MLP encoder with a masked-mean pool.

    Every step goes through ``Linear(D, H) - LayerNorm - GELU - Dropout`` and one residual block
    ``h + Dropout(GELU(LayerNorm(Linear(h))))``. The valid steps are averaged (true lengths, so
    padding never dilutes the mean) and a :class:`GaussianHead` gives ``mu, logvar, std, z``.

    forward(x (B, L, D), lengths (B,)) -> dict with ``tokens (B, L, H)`` (0 on padded steps),
    ``token_mask (B, L)``, ``pooled (B, H)``, ``mu, logvar, std, z (B, H)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.0, variational: bool = True):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.block = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = GaussianHead(hidden_dim, variational)

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        mask = length_mask(lengths, x.shape[1])
        h = self.proj(x)
        h = h + self.block(h)
        tokens = h * mask.unsqueeze(-1).to(h.dtype)
        pooled = self.norm(masked_mean(h, mask))
        return {"tokens": tokens, "token_mask": mask, "pooled": pooled, **self.head(pooled)}


class VariationalLSTMEncoder(nn.Module):
    """LSTM encoder over the padded batch with true lengths (no packing: one fused LSTM call per
    direction, cuDNN on CUDA).

    The LSTM has ``ceil(H / directions)`` units per direction; a linear layer maps the
    concatenated directions back to ``H``. The forward direction is causal, so its state at each
    row's last valid step (gathered at ``length - 1``) has never seen the padding after it; the
    backward direction runs with each row's valid steps reversed in place, so it too meets the
    padding only after them (``modules.pooling.direction_inputs``). The pooled state is the
    projection of those final states (forward: last valid step; backward: first step), so padding
    never enters any output, whatever it holds. Length-1 sequences work like any other. The
    parameters are those of one ``nn.LSTM`` (bidirectional when asked), as in the packed version
    this replaced, so its checkpoints still load. ``forward`` is ``streams`` (what each direction
    reads, and its weights), one LSTM run per direction, then ``finish``; ``encode_modalities`` may
    run the directions of several encoders at once instead.

    forward(x (B, L, D), lengths (B,)) -> dict with ``tokens (B, L, H)`` (0 on padded steps),
    ``token_mask (B, L)``, ``pooled (B, H)``, ``mu, logvar, std, z (B, H)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.0, bidirectional: bool = True,
                 variational: bool = True):
        super().__init__()
        self.directions = 2 if bidirectional else 1
        units = -(-hidden_dim // self.directions)
        self.lstm = nn.LSTM(input_dim, units, batch_first=True, bidirectional=bidirectional)
        self.proj = nn.Linear(units * self.directions, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = GaussianHead(hidden_dim, variational)

    def streams(self, x: Tensor, lengths: Tensor) -> tuple[list[Tensor], list[list[Tensor]], tuple]:
        """The first half of ``forward``: the one-directional LSTM runs it needs, to be run by the
        caller (alone, or stacked with other encoders' runs: ``encode_modalities``).

        Returns ``(inputs, weights, context)``: per direction its input ``(B, L, D)`` and its
        ``(w_ih, w_hh, b_ih, b_hh)`` (``modules.stacked_lstm``), and what ``finish`` needs.
        """
        lengths = lengths.long().clamp(1, x.shape[1])
        inputs, index = direction_inputs(x, lengths, self.directions)
        per = len(self.lstm._flat_weights) // self.directions
        weights = [self.lstm._flat_weights[d * per:(d + 1) * per] for d in range(self.directions)]
        return inputs, weights, (x, lengths, index)

    def finish(self, outs: list[Tensor], context: tuple) -> dict[str, Tensor]:
        """The second half of ``forward``: the per-step states ``(B, L, units)`` of each run of
        ``streams`` (same order, same ``context``) -> the encoder's output."""
        x, lengths, index = context
        mask = length_mask(lengths, x.shape[1])
        out, last = join_directions(outs, lengths, index)
        tokens = self.dropout(self.proj(out)) * mask.unsqueeze(-1).to(x.dtype)
        pooled = self.norm(self.dropout(self.proj(last)))
        return {"tokens": tokens, "token_mask": mask, "pooled": pooled, **self.head(pooled)}

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        inputs, weights, context = self.streams(x, lengths)
        return self.finish(run_lstms(inputs, weights, self.training), context)


def encode_modalities(encoders: Mapping[str, nn.Module], inputs: Mapping[str, Tensor], lengths: Tensor,
                      stack: bool = False) -> dict[str, dict[str, Tensor]]:
    """``{m: encoders[m](inputs[m], lengths[:, i])}`` for the i-th modality ``m`` of ``encoders``.

    The LSTM encoders' one-directional runs all go through one ``modules.stacked_lstm.run_lstms``
    call (one piece outside a compiled graph); ``stack``: those of equal length run as block-diagonal
    LSTMs of at most 128 units (``modules.stacked_lstm.stack_groups``), at the default width one run
    per modality instead of two, with outputs equal to the unstacked ones up to rounding.
    """
    names = list(encoders)
    recurrent = [m for m in names if isinstance(encoders[m], VariationalLSTMEncoder)]
    out = {m: encoders[m](inputs[m], lengths[:, i]) for i, m in enumerate(names) if m not in recurrent}
    if recurrent:
        prepared = {m: encoders[m].streams(inputs[m], lengths[:, names.index(m)]) for m in recurrent}
        runs = iter(run_lstms([seq for m in recurrent for seq in prepared[m][0]],
                              [w for m in recurrent for w in prepared[m][1]], encoders[recurrent[0]].training, stack))
        for m in recurrent:
            out[m] = encoders[m].finish([next(runs) for _ in prepared[m][0]], prepared[m][2])
    return {m: out[m] for m in names}


def build_encoder(kind: str, input_dim: int, hidden_dim: int, dropout: float, bidirectional: bool,
                  variational: bool) -> nn.Module:
    """The encoder named by ``kind``: ``"mlp"``, ``"lstm"`` or ``"cfc"`` (``modules.cfc_encoder``)."""
    if kind == "mlp":
        return VariationalMLPEncoder(input_dim, hidden_dim, dropout, variational)
    if kind == "lstm":
        return VariationalLSTMEncoder(input_dim, hidden_dim, dropout, bidirectional, variational)
    if kind == "cfc":
        from modules.cfc_encoder import VariationalCfCEncoder  # here: it imports GaussianHead from this file

        return VariationalCfCEncoder(input_dim, hidden_dim, dropout, bidirectional, variational)
    raise ValueError(f"unknown encoder {kind!r}; choose 'mlp', 'lstm' or 'cfc'")
