"""Reader for MulT pickles (``mosi_data.pkl``, ``mosei_senti_data.pkl``, ``*_noalign.pkl``).

Layout: {split: {"text", "audio", "vision": (N, L, D), "labels": (N, 1, 1), "id": (N, 3) rows of
[video, start, end] or (N,)}}. Ids become 'video[start:end]' strings. The authors pad with zeros
before the data (left padding): lengths are read from the first non-zero step and every sequence is
moved to the start (see padding.py); a right-padded file is read as such.
"""

from __future__ import annotations

from .mmsa import require, split_dicts
from .types import MultimodalData, Split
from .validate import build_split

LABEL_KEY = "labels"


def read_mult(obj: object, path: str, name: str) -> MultimodalData:
    """MultimodalData from an already (safely) unpickled MulT object."""
    splits: dict[str, Split] = {}
    notes: list[str] = []
    for s, d in split_dicts(obj, path).items():
        feats = {m: require(d, m, path, s) for m in ("text", "audio", "vision")}
        labels = require(d, LABEL_KEY, path, s)
        splits[s] = build_split(path, s, feats, labels, LABEL_KEY, ids=d.get("id"), raw_text=d.get("raw_text"),
                                notes=notes)
    return MultimodalData(name=name, format="mult", source=path, splits=splits, notes=notes)
