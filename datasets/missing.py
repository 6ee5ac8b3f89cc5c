"""Missing-modality protocols: random modality masks, fixed subsets, frame-level erasure.

Presence masks are (n, 3) bool in T, A, V order, True = present. ``modality_masks`` is the test-time
protocol of docs/INTERFACES.md, bit for bit; ``sample_presence`` is its core with the rng passed in, which
train-time modality dropout calls with the trainer's own generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .types import MODALITIES, Split

SUBSETS: dict[str, tuple[bool, bool, bool]] = {
    "T": (True, False, False),
    "A": (False, True, False),
    "V": (False, False, True),
    "TA": (True, True, False),
    "TV": (True, False, True),
    "AV": (False, True, True),
    "TAV": (True, True, True),
}


def rate_key(p: float) -> str:
    """The text key of a missing rate in every output (metrics.json, results.csv, tables, report,
    TensorBoard tags): ``repr(float(p))``, the shortest decimal that reads back as the same float,
    never rounded, so close rates stay apart. 0.0 -> '0.0', 0.3 -> '0.3', 0.01 -> '0.01'."""
    return repr(float(p))


def sample_presence(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """(n, 3) bool: each modality missing with probability p; an all-missing row keeps one at random."""
    present = rng.random((n, 3)) >= p
    none = ~present.any(axis=1)
    present[none, rng.integers(0, 3, int(none.sum()))] = True
    return present


def modality_masks(n: int, p: float) -> np.ndarray:
    """(n, 3) bool, True = present: the fixed test-time masks for rate p (docs/INTERFACES.md)."""
    return sample_presence(np.random.default_rng(round(p * 1000)), n, p)


def subset_masks(n: int, name: str) -> np.ndarray:
    """(n, 3) bool: every row present exactly in the modalities of subset ``name`` (e.g. 'TV')."""
    if name not in SUBSETS:
        raise KeyError(f"unknown subset {name!r}; expected one of {list(SUBSETS)}")
    return np.tile(np.array(SUBSETS[name], dtype=bool), (n, 1))


def frame_keep(split: Split, r: float) -> dict[str, np.ndarray]:
    """Per modality, ``(N, L_m)`` bool: the time steps ``frame_missing(split, r)`` keeps (True) and
    zeroes (False), without touching the features (N x L bytes per modality).

    One rng ``default_rng(round(r * 1000))`` draws (N, L) uniforms per modality in T, A, V order; each
    valid step is erased with probability r; a sequence that would lose every step keeps one valid
    step chosen uniformly. Padding is always kept (it is zero already).
    """
    rng = np.random.default_rng(round(r * 1000))
    keep = {}
    for j, m in enumerate(MODALITIES):
        n, seq_len = split.features(m).shape[:2]
        lengths = split.lengths[:, j]
        valid = np.arange(seq_len)[None, :] < lengths[:, None]
        erase = (rng.random((n, seq_len)) < r) & valid
        all_gone = erase.sum(1) == lengths
        rows = np.nonzero(all_gone)[0]
        erase[rows, rng.integers(0, lengths[rows])] = False
        keep[m] = ~erase
    return keep


def frame_missing(split: Split, r: float) -> Split:
    """A copy of ``split`` with each valid time step of each modality zeroed with probability r
    (the steps ``frame_keep`` drops). Padding is untouched, lengths are unchanged, the input arrays
    are not modified. r == 0 returns ``split`` itself. The evaluation sweep does not copy: it passes
    ``frame_keep`` to ``SplitTensors``, which zeroes the steps batch by batch.
    """
    if r == 0:
        return split
    keep = frame_keep(split, r)
    return dataclasses.replace(split, **{m: split.features(m) * keep[m][:, :, None] for m in MODALITIES})
