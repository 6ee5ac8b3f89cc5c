"""Variational encoder on closed-form continuous-time cells (CfC, Hasani et al., Nature Machine
Intelligence 2022), the liquid-time-constant family, through ``ncps.torch.CfC``.

A CfC cell updates its state as ``h' = tanh(f1) * (1 - s) + s * tanh(f2)`` with the time gate
``s = sigmoid(a * t + b)``, where ``f1, f2, a, b`` are linear maps of a backbone
``LeCunTanh(Linear([x, h]))``; every step here spans one time unit (``t = 1``).

Padding: ``ncps`` runs a fixed number of steps over the padded batch (it has no packing, and its
``timespans`` argument does not broadcast over a batch), so true lengths are honoured by reading
the states, not by skipping steps. The forward direction is causal, so its state at a row's last
valid step (gathered at ``length - 1``) has never seen the padding after it. The backward
direction runs over each row with its valid steps reversed in place (``x[L-1], ..., x[0]``,
then the untouched padding; ``modules.pooling.run_directions``), so its state after ``length``
steps is again free of padding; the per-step backward states are put back in the original order
the same way. Padded steps of ``tokens`` are zeroed. So padding cannot change any output, whatever it holds.
"""

from __future__ import annotations

from ncps.torch import CfC
from torch import Tensor, nn

from modules.encoders import GaussianHead
from modules.pooling import length_mask, run_directions


class VariationalCfCEncoder(nn.Module):
    """CfC encoder (``ncps.torch.CfC``) with true lengths; see the module docstring for padding.

    Each direction has ``ceil(H / directions)`` CfC units and a backbone of ``H`` units (one
    layer); a linear layer maps the concatenated directions back to ``H``. The pooled state is
    that projection applied to the final states (forward: after the last valid step; backward:
    after the first step), then LayerNorm and a :class:`~modules.encoders.GaussianHead`.

    Args:
        input_dim: feature size ``D``.
        hidden_dim: state size ``H``.
        dropout: dropout on the projected states.
        bidirectional: a second CfC reads each row's valid steps backwards.
        variational: sample ``z`` in training (see ``GaussianHead``).

    Shape:
        - x: ``(B, L, D)``, zero-padded (padding may hold anything).
        - lengths: ``(B,)`` true lengths, clamped to ``[1, L]``.
        - Output: dict with ``tokens (B, L, H)`` (0 on padded steps), ``token_mask (B, L)`` bool
          (True = valid step), ``pooled (B, H)`` and ``mu, logvar, std, z (B, H)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.0, bidirectional: bool = True,
                 variational: bool = True):
        super().__init__()
        self.directions = 2 if bidirectional else 1
        units = -(-hidden_dim // self.directions)
        self.cells = nn.ModuleList(
            CfC(input_dim, units, return_sequences=True, batch_first=True, backbone_units=hidden_dim,
                backbone_layers=1)
            for _ in range(self.directions))
        self.proj = nn.Linear(units * self.directions, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = GaussianHead(hidden_dim, variational)

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        max_len = x.shape[1]
        lengths = lengths.long().clamp(1, max_len)
        mask = length_mask(lengths, max_len)
        out, last = run_directions([lambda seq, cell=cell: cell(seq)[0] for cell in self.cells], x, lengths)
        tokens = self.dropout(self.proj(out)) * mask.unsqueeze(-1).to(x.dtype)
        pooled = self.norm(self.dropout(self.proj(last)))
        return {"tokens": tokens, "token_mask": mask, "pooled": pooled, **self.head(pooled)}
