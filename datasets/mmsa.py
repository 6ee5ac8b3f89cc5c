"""Reader for MMSA pickles (``aligned_50.pkl``, ``unaligned_50.pkl``, the shared ``mosi_bclstm_dev.pkl``).

Layout: {split: {"text", "audio", "vision": (N, L, D), "regression_labels": (N,) or (N, 1),
"id", "raw_text", "audio_lengths", "vision_lengths", ...}}. ``text_bert`` (token ids and masks) is
ignored; text lengths come from the last non-zero step, as do audio/vision lengths when absent.
"""

from __future__ import annotations

from .errors import DataError
from .types import SPLITS, MultimodalData, Split
from .validate import build_split

LABEL_KEY = "regression_labels"


def split_dicts(obj: object, path: str) -> dict[str, dict]:
    """The {split: dict} top level of a pickle, or DataError naming what is missing."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of splits at the top level, got {type(obj).__name__}")
    for s in SPLITS:
        if s not in obj:
            raise DataError(f"{path}: missing split '{s}' (found {sorted(map(str, obj))})")
        if not isinstance(obj[s], dict):
            raise DataError(f"{path} [split '{s}']: expected a dict of arrays, got {type(obj[s]).__name__}")
    return {s: obj[s] for s in SPLITS}


def require(d: dict, key: str, path: str, split: str) -> object:
    if key not in d:
        raise DataError(f"{path} [split '{split}']: missing key '{key}' (found {sorted(map(str, d))})")
    return d[key]


def read_mmsa(obj: object, path: str, name: str) -> MultimodalData:
    """MultimodalData from an already (safely) unpickled MMSA object."""
    splits: dict[str, Split] = {}
    for s, d in split_dicts(obj, path).items():
        feats = {m: require(d, m, path, s) for m in ("text", "audio", "vision")}
        labels = require(d, LABEL_KEY, path, s)
        lengths = {m: d.get(f"{m}_lengths") for m in ("audio", "vision")}
        splits[s] = build_split(path, s, feats, labels, LABEL_KEY, ids=d.get("id"),
                                raw_text=d.get("raw_text"), lengths=lengths)
    return MultimodalData(name=name, format="mmsa", source=path, splits=splits)
