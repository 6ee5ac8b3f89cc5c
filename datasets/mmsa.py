"""Reader for MMSA pickles (``aligned_50.pkl``, ``unaligned_50.pkl``, the shared ``mosi_bclstm_dev.pkl``).

Layout: {split: {"text", "audio", "vision": (N, L, D), "regression_labels": (N,) or (N, 1),
"id", "raw_text", "audio_lengths", "vision_lengths", "text_bert": (N, 3, L) rows of token ids,
attention mask, segment ids, ...}}. BERT features are not zero on padded tokens, so the text length
comes from ``text_bert``'s attention mask when the file has one (as MMSA's own loader reads it);
otherwise from the zero steps. Audio/vision lengths come from ``*_lengths``, else from the zero steps.
The padding side is checked per array and left-padded data moved to the start (see padding.py).
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import DataError
from .types import SPLITS, MultimodalData, Split
from .validate import build_split

log = logging.getLogger(__name__)

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


def bert_mask(d: dict, text: object, path: str, split: str) -> np.ndarray | None:
    """(N, L) bool attention mask of ``text_bert`` (its second row), or None when absent or unusable.

    Usable: shape (N, 3, L) matching ``text`` (N, L, D), 0/1 values, at least one token per row.
    An unusable mask is ignored with a warning (text lengths then come from the zero steps).
    """
    if "text_bert" not in d:
        return None
    tb = np.asarray(d["text_bert"])
    shape = getattr(text, "shape", None)
    where = f"{path} [split '{split}', key 'text_bert']"
    if tb.dtype.kind not in "fiub" or tb.ndim != 3 or tb.shape[1] != 3 or shape is None or len(shape) != 3 \
            or tb.shape[0] != shape[0] or tb.shape[2] != shape[1]:
        log.warning("%s: shape %s is not (N, 3, L) of the text %s; ignored, text lengths come from the zero steps",
                    where, tb.shape, shape)
        return None
    mask = tb[:, 1]
    if not np.isin(mask, (0, 1)).all() or not (mask.sum(1) > 0).all():
        log.warning("%s: row 1 is not a 0/1 attention mask with a token in every sample; ignored, text "
                    "lengths come from the zero steps", where)
        return None
    return mask.astype(bool)


def read_mmsa(obj: object, path: str, name: str) -> MultimodalData:
    """MultimodalData from an already (safely) unpickled MMSA object."""
    splits: dict[str, Split] = {}
    notes: list[str] = []
    for s, d in split_dicts(obj, path).items():
        feats = {m: require(d, m, path, s) for m in ("text", "audio", "vision")}
        labels = require(d, LABEL_KEY, path, s)
        lengths = {m: d.get(f"{m}_lengths") for m in ("audio", "vision")}
        mask = bert_mask(d, feats["text"], path, s)
        splits[s] = build_split(path, s, feats, labels, LABEL_KEY, ids=d.get("id"), raw_text=d.get("raw_text"),
                                lengths=lengths, masks={"text": mask} if mask is not None else None, notes=notes)
        if mask is not None and s == "train":
            notes.append(f"{path}: text lengths from the 'text_bert' attention mask")
    return MultimodalData(name=name, format="mmsa", source=path, splits=splits, notes=notes)
