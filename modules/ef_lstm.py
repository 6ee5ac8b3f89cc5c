"""EF-LSTM baseline (early fusion), as MMSA defines it.

The three modalities are concatenated at every time step, ``(B, L, Dt + Da + Dv)``, normalised
(BatchNorm), read by one two-layer unidirectional LSTM whose last hidden state goes through
Dropout -> Linear+ReLU -> Dropout -> the heads. A missing modality enters as zeros, which is all
an early-fusion model can do.

Shapes and masking:

``encode(batch)`` does no learning and never reads presence: it returns the sequences on a
common time axis, ``text (B, Lt, Dt)``, ``audio (B, Lt, Da)``, ``vision (B, Lt, Dv)`` and
``lengths (B,)`` (the text lengths). ``fuse(states, presence (B, 3))`` zeroes the missing
modalities' sequences, concatenates, runs the LSTM and reads each row's output at its last valid
step (so padding never enters) and returns ``score (B,)`` in [-3, 3], ``logits (B, C)``, no
auxiliary losses.

Unaligned data: per-step concatenation needs one time axis. MMSA's EF_LSTM only accepts aligned
data; here a row whose audio or vision length differs from its text length is resampled onto
the text steps: text step t of a row with text length Lt takes the mean of the modality's frames
``[floor(t * Lm / Lt), max(floor((t + 1) * Lm / Lt), floor(t * Lm / Lt) + 1))`` (average pooling
when Lm > Lt, nearest-frame repetition when Lm < Lt). Aligned rows pass through unchanged.

Two departures from MMSA, both forced by variable lengths: MMSA's ``BatchNorm1d(seq_len)``
normalises per time step and ties the model to one padded length, so the BatchNorm here is over
the feature channels of the valid steps; and the final state is taken at each row's true length
instead of after the padding.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.base import MultimodalModel
from modules.pooling import length_mask
from modules.presence import MODALITIES, check_presence


def resample_to(x: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Put ``x (B, L, D)`` (true lengths ``lengths (B,)``) on ``steps`` time steps of which each row
    uses its first ``target_lengths[b]``; step t is the mean of the source frames of its bin (see the
    module docstring). Steps past the target length are zero."""
    b, _, d = x.shape
    src = lengths.clamp(min=1).to(torch.float64)[:, None]
    dst = target_lengths.clamp(min=1).to(torch.float64)[:, None]
    t = torch.arange(steps, device=x.device, dtype=torch.float64)[None, :]
    start = torch.floor(t * src / dst).long()
    end = torch.maximum(torch.floor((t + 1) * src / dst).long(), start + 1)
    valid = t < dst
    start = torch.where(valid, start, torch.zeros_like(start))
    end = torch.where(valid, end, torch.ones_like(end))
    csum = torch.cat([x.new_zeros(b, 1, d, dtype=torch.float64), x.double().cumsum(1)], dim=1)
    gather = lambda idx: torch.gather(csum, 1, idx[:, :, None].expand(-1, -1, d))
    out = (gather(end) - gather(start)) / (end - start)[:, :, None].double()
    return (out * valid[:, :, None]).to(x.dtype)


def align_to_text(batch: dict) -> dict[str, torch.Tensor]:
    """The batch's modalities on the text time axis (``(B, Lt, D_m)`` each) and ``lengths (B,)``.

    Rows whose audio/vision length and padded size already match the text pass through bit for bit;
    the others are resampled with ``resample_to``.
    """
    lengths = batch["lengths"]
    text = batch["text"]
    out = {"text": text, "lengths": lengths[:, 0]}
    for i, m in enumerate(MODALITIES[1:], start=1):
        x = batch[m]
        same = lengths[:, i] == lengths[:, 0]
        if x.shape[1] == text.shape[1] and bool(same.all()):
            out[m] = x
            continue
        resampled = resample_to(x, lengths[:, i], lengths[:, 0], text.shape[1])
        if x.shape[1] == text.shape[1]:
            resampled = torch.where(same[:, None, None], x, resampled)
        out[m] = resampled
    return out


class EFLSTM(MultimodalModel):
    """Early-fusion LSTM; see the module docstring for shapes, masking and unaligned data."""

    min_batch_size = 2  # BatchNorm

    def __init__(self, cfg, dims: dict[str, int]):
        super().__init__()
        h = cfg.hidden_dim
        in_dim = sum(dims[m] for m in MODALITIES)
        self.norm = nn.BatchNorm1d(in_dim)
        self.lstm = nn.LSTM(in_dim, h, num_layers=2, dropout=cfg.dropout, batch_first=True)
        self.post = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.add_heads(h, cfg.num_classes)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return align_to_text(batch)

    def fuse(self, states: dict[str, torch.Tensor], presence: torch.Tensor) -> dict:
        check_presence(presence)
        keep = presence.bool().to(states["text"].device)
        x = torch.cat([torch.where(keep[:, i, None, None], states[m], torch.zeros_like(states[m]))
                       for i, m in enumerate(MODALITIES)], dim=-1)
        lengths = states["lengths"].long().clamp(min=1, max=x.shape[1])
        x = x[:, :int(lengths.max())]
        valid = length_mask(lengths, x.shape[1])
        normed = x.new_zeros(x.shape)
        normed[valid] = self.norm(x[valid])  # statistics over valid steps only
        out, _ = self.lstm(normed)
        # A unidirectional LSTM's output at a row's last valid step is its state after exactly the valid
        # steps (what packing gives), and the padded run is ~1.6x faster than a packed one on CPU.
        h = self.post(out[torch.arange(len(lengths), device=out.device), lengths - 1])
        return self.predict(h)
