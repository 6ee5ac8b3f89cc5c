"""Which end of a file's sequences holds the zero padding, and the move to the project's convention.

The project keeps every sequence at the start of its time axis, zeros after its true length
(``Split``). Files do not all agree: MMSA writes the data first (right padding); the MulT authors'
pickles put the zeros first (left padding), so a 15-step sentence padded to 50 sits in steps
35..49. Readers detect the side per array from the zero steps (or from the lengths/mask the file
gives) and move left-padded rows to the start, so no model, standardizer or missing protocol ever
sees another layout.
"""

from __future__ import annotations

import numpy as np

CHUNK = 512  # rows processed at once over big (N, L, D) arrays


def occupancy(x: np.ndarray) -> np.ndarray:
    """(N, L) bool: step t of row i has a non-zero feature. x: (N, L, D)."""
    out = np.empty(x.shape[:2], dtype=bool)
    for i in range(0, x.shape[0], CHUNK):
        np.any(x[i:i + CHUNK] != 0, axis=2, out=out[i:i + CHUNK])
    return out


def padding_side(occ: np.ndarray, lengths: np.ndarray | None = None) -> str:
    """'left' when most rows that show a side have their zeros before the data, else 'right'.

    occ: (N, L) bool occupancy (or a 0/1 attention mask). Without ``lengths`` a row votes 'left'
    when its first step is empty and its last is not (and 'right' the other way round); with the
    file's ``lengths (N,)`` a shorter row votes for the end that holds all its non-zero steps. Rows
    that show no side (full length, or data at both ends) do not vote; no vote at all is 'right'.
    """
    occ = np.asarray(occ, dtype=bool)
    seq_len = occ.shape[1]
    if lengths is None:
        left = ~occ[:, 0] & occ[:, -1]
        right = occ[:, 0] & ~occ[:, -1]
    else:
        lengths = np.asarray(lengths)
        steps = np.arange(seq_len)[None, :]
        short = lengths < seq_len
        after = (occ & (steps >= lengths[:, None])).any(1)  # data past the length: not right-padded
        before = (occ & (steps < (seq_len - lengths)[:, None])).any(1)  # data in the front zeros of a left row
        left = short & after & ~before
        right = short & before & ~after
    return "left" if int(left.sum()) > int(right.sum()) else "right"


def lengths_from_occupancy(occ: np.ndarray, side: str) -> np.ndarray:
    """int64 (N,) true lengths (>= 1): through the last non-zero step ('right') or from the first ('left')."""
    occ = np.asarray(occ, dtype=bool)
    seq_len = occ.shape[1]
    has = occ.any(1)
    if side == "left":
        out = seq_len - np.argmax(occ, axis=1)
    else:
        out = seq_len - np.argmax(occ[:, ::-1], axis=1)
    return np.where(has, out, 1).astype(np.int64)


def move_to_start(x: np.ndarray, lengths: np.ndarray) -> None:
    """In place: row i's last ``lengths[i]`` steps become its first (left -> right padding). x: (N, L, D)."""
    seq_len = x.shape[1]
    for i in range(0, x.shape[0], CHUNK):
        shift = seq_len - np.asarray(lengths[i:i + CHUNK])
        idx = (np.arange(seq_len)[None, :] + shift[:, None]) % seq_len  # (B, L)
        x[i:i + CHUNK] = np.take_along_axis(x[i:i + CHUNK], idx[:, :, None], axis=1)
