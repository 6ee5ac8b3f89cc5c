"""Shape checks, lengths and padding side, and cleaning shared by every reader.

Readers hand raw arrays to ``build_split``; ``load_data`` then runs ``clean_nonfinite`` and
``check_data`` on the assembled MultimodalData, so real and synthetic data take the same path.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import DataError
from .padding import lengths_from_occupancy, move_to_start, occupancy, padding_side
from .types import MODALITIES, SPLITS, MultimodalData, Split

log = logging.getLogger(__name__)

CHUNK = 512  # rows processed at once by the chunked passes over big (N, L, D) arrays
LABEL_TOL = 1e-4  # float32 round-off tolerated beyond [-3, 3] (then clipped)


def _where(file: str, split: str, key: str) -> str:
    return f"{file} [split '{split}', key '{key}']"


def as_features(value: object, file: str, split: str, key: str) -> np.ndarray:
    """A float32 (N, L, D) array, or DataError naming file/split/key."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        raise DataError(f"{_where(file, split, key)}: expected a numeric array, got {type(value).__name__}"
                        + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else ""))
    if value.ndim != 3:
        raise DataError(f"{_where(file, split, key)}: expected rank 3 (N, L, D), got shape {value.shape}")
    if value.shape[1] == 0 or value.shape[2] == 0:
        raise DataError(f"{_where(file, split, key)}: empty sequence or feature axis, shape {value.shape}")
    return np.ascontiguousarray(value, dtype=np.float32)


def as_labels(value: object, file: str, split: str, key: str) -> np.ndarray:
    """Float32 (N,) labels from (N,), (N, 1) or (N, 1, 1)."""
    try:
        arr = np.asarray(value)
    except ValueError:
        raise DataError(f"{_where(file, split, key)}: labels are ragged (rows of different lengths); expected "
                        f"shape (N,), (N, 1) or (N, 1, 1)") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{_where(file, split, key)}: labels must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0 or (arr.ndim > 1 and int(np.prod(arr.shape[1:])) != 1):
        raise DataError(f"{_where(file, split, key)}: expected labels of shape (N,), (N, 1) or (N, 1, 1), "
                        f"got {arr.shape}")
    return arr.reshape(-1).astype(np.float32)


def as_strings(value: object, n: int, file: str, split: str, key: str) -> np.ndarray:
    """A str (N,) array; bytes are decoded, (N, k) rows (MulT ids) become 'video[start:end]'."""
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[0] == n:
        rows = [[_text(v) for v in row] for row in arr]
        out = [f"{r[0]}[{':'.join(r[1:])}]" if len(r) > 1 else r[0] for r in rows]
        return np.array(out, dtype=str)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{_where(file, split, key)}: expected {n} entries, got shape {arr.shape}")
    return np.array([_text(v) for v in arr], dtype=str)


def _text(v: object) -> str:
    if isinstance(v, bytes | np.bytes_):
        return v.decode("utf-8", errors="replace")
    return str(v)


def as_lengths(value: object, x: np.ndarray, file: str, split: str, key: str) -> np.ndarray:
    """int64 (N,) lengths from a list/array of whole numbers >= 0, clipped to [1, L]."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged rows
        arr = np.asarray(value, dtype=object)
    if arr.dtype.kind not in "fiu" or arr.size != x.shape[0]:
        raise DataError(f"{_where(file, split, key)}: expected {x.shape[0]} integer lengths, "
                        f"got shape {arr.shape} dtype {arr.dtype}")
    flat = arr.reshape(-1)
    bad = flat < 0
    if arr.dtype.kind == "f":
        bad |= ~np.isfinite(flat) | (flat != np.round(flat))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise DataError(f"{_where(file, split, key)}: {int(bad.sum())} lengths are not whole numbers >= 0 "
                        f"(e.g. row {i}: {flat[i]})")
    return np.clip(flat.astype(np.int64), 1, x.shape[1])


def read_lengths(x: np.ndarray, value: object, mask: np.ndarray | None, file: str, split: str,
                 key: str) -> tuple[np.ndarray, str]:
    """True lengths int64 (N,) and the padding side ('left'/'right') of x (N, L, D).

    From the file's valid-step ``mask`` (N, L) bool when given (MMSA's ``text_bert`` attention mask),
    else its ``value`` lengths with the side read from where the non-zero steps lie, else from the
    zero steps alone (first/last non-zero step, per the side most rows show).
    """
    if mask is not None:
        return np.clip(mask.sum(1), 1, x.shape[1]).astype(np.int64), padding_side(mask)
    occ = occupancy(x)
    if value is None:
        side = padding_side(occ)
        return lengths_from_occupancy(occ, side), side
    lens = as_lengths(value, x, file, split, key)
    return lens, padding_side(occ, lens)


def zero_padding(x: np.ndarray, lengths: np.ndarray) -> None:
    """Zero x[i, lengths[i]:] in place, so padding is exactly zero as Split promises."""
    short = np.nonzero(lengths < x.shape[1])[0]
    for i in short:
        x[i, lengths[i]:] = 0


def build_split(file: str, split: str, feats: dict[str, object], labels: object, label_key: str,
                ids: object = None, raw_text: object = None, lengths: dict[str, object] | None = None,
                masks: dict[str, np.ndarray] | None = None, notes: list[str] | None = None) -> Split:
    """Check and assemble one Split from raw reader output, data moved to the start of each row.

    feats: modality -> (N, L, D) array; lengths: modality -> list/array of N lengths; masks: modality ->
    (N, L) bool valid steps (absent both: lengths derived from the zero steps). Left-padded arrays
    (see padding.py) are moved to the start; a line saying so is appended to ``notes``. Raises
    DataError on wrong rank or mismatched N.
    """
    lengths, masks = lengths or {}, masks or {}
    arrays = {m: as_features(feats[m], file, split, m) for m in MODALITIES}
    y = as_labels(labels, file, split, label_key)
    n = y.shape[0]
    for m, x in arrays.items():
        if x.shape[0] != n:
            raise DataError(f"{_where(file, split, m)}: {x.shape[0]} samples but '{label_key}' has {n}")
    read = {m: read_lengths(arrays[m], lengths.get(m), masks.get(m), file, split, f"{m}_lengths")
            for m in MODALITIES}
    lens = np.stack([read[m][0] for m in MODALITIES], axis=1)
    left = [m for m in MODALITIES if read[m][1] == "left"]
    for j, m in enumerate(MODALITIES):
        if m in left:
            move_to_start(arrays[m], lens[:, j])
        zero_padding(arrays[m], lens[:, j])
    if left:
        msg = (f"{file} [split '{split}']: {', '.join(left)} left-padded (zeros before the data, the MulT "
               "authors' layout): read true lengths and moved each sequence to the start")
        log.info(msg)
        if notes is not None:
            notes.append(msg)
    ids_arr = (as_strings(ids, n, file, split, "id") if ids is not None
               else np.array([f"{split}_{i}" for i in range(n)], dtype=str))
    text_arr = as_strings(raw_text, n, file, split, "raw_text") if raw_text is not None else np.full(n, "", dtype=str)
    return Split(text=arrays["text"], audio=arrays["audio"], vision=arrays["vision"], lengths=lens,
                 labels=y, ids=ids_arr, raw_text=text_arr)


def clean_nonfinite(data: MultimodalData, nan_policy: str = "error") -> None:
    """In place: -inf -> 0 always (logged); NaN/+inf -> DataError ('error') or 0 ('zero')."""
    if nan_policy not in ("error", "zero"):
        raise ValueError(f"nan_policy must be 'error' or 'zero', got {nan_policy!r}")
    for split_name, split in data.splits.items():
        for m in MODALITIES:
            x = split.features(m)
            n_neg, n_bad = 0, 0
            for i in range(0, x.shape[0], CHUNK):
                chunk = x[i:i + CHUNK]
                finite = np.isfinite(chunk)
                if finite.all():
                    continue
                neg = np.isneginf(chunk)
                bad = ~finite & ~neg
                n_neg += int(neg.sum())
                n_bad += int(bad.sum())
                if bad.any() and nan_policy == "error":
                    continue  # count everything first, then raise
                chunk[~finite] = 0.0
            if n_neg:
                log.warning("%s [split '%s', key '%s']: replaced %d -inf values by 0",
                            data.source, split_name, m, n_neg)
            if n_bad:
                if nan_policy == "error":
                    raise DataError(f"{_where(data.source, split_name, m)}: {n_bad} NaN/+inf feature values "
                                    "(pass nan_policy='zero' / --nan_policy zero to replace them by 0)")
                log.warning("%s [split '%s', key '%s']: replaced %d NaN/+inf values by 0",
                            data.source, split_name, m, n_bad)


def check_data(data: MultimodalData, label_key: str = "labels") -> None:
    """Splits present and non-empty, a warning for a sample id in two splits, same feature dims in
    every split, labels finite and in [-3, 3], and some non-0 label in valid and test (Acc-2, F1,
    Brier and NLL are scored on those)."""
    for s in SPLITS:
        if s not in data.splits:
            raise DataError(f"{data.source}: missing split '{s}' (found {sorted(data.splits)})")
        if data.splits[s].n == 0:
            raise DataError(f"{data.source} [split '{s}']: empty split (0 samples)")
    for k, a in enumerate(SPLITS):  # a sample in two splits: the later split's scores are not held out
        for b in SPLITS[k + 1:]:
            both = np.intersect1d(data.splits[a].ids, data.splits[b].ids)
            if both.size:
                log.warning("%s: %d sample ids of split '%s' are also in split '%s' (e.g. %s), so its scores are "
                            "not held out; check the fold lists", data.source, both.size, b, a, both[0])
    for m in MODALITIES:
        dims = {s: data.splits[s].features(m).shape[2] for s in SPLITS}
        if len(set(dims.values())) > 1:
            raise DataError(f"{data.source} [key '{m}']: feature dims differ between splits: {dims}")
    for s in SPLITS:
        y = data.splits[s].labels
        bad = ~np.isfinite(y) | (np.abs(y) > 3 + LABEL_TOL)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise DataError(f"{_where(data.source, s, label_key)}: {int(bad.sum())} labels outside [-3, 3] "
                            f"(e.g. row {i}: {y[i]})")
        np.clip(y, -3.0, 3.0, out=y)
        if s != "train" and not y.any():
            raise DataError(f"{_where(data.source, s, label_key)}: every label is 0, so the non-0 metrics "
                            "(Acc-2, F1, Brier, NLL) are undefined; check that the file holds sentiment scores")
