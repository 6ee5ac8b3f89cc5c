"""Smaller feature storage: float16 arrays, and a cache of cleaned, standardized splits as .npy files.

``to_dtype`` converts every feature array of a MultimodalData (after standardization: standardized
values sit well inside float16's range) one array at a time, so the peak is the data plus one array.
``cached`` writes the splits once into ``folder/<key hash>/`` and opens them memory-mapped
(read-only) from then on: the features stay in the page cache, not in the process's own memory,
so a run's private memory no longer grows with N. Batches are cast to float32 when gathered.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.atomic import write_json

from .errors import DataError
from .types import MODALITIES, MultimodalData, Split

FEATURE_DTYPES = ("float32", "float16")
_SMALL = ("lengths", "labels", "ids", "raw_text")
CHUNK = 512


def to_dtype(data: MultimodalData, dtype: str) -> None:
    """In place: every split's feature arrays stored as ``dtype`` ('float32' or 'float16')."""
    if dtype not in FEATURE_DTYPES:
        raise DataError(f"unknown feature dtype {dtype!r}; expected one of {FEATURE_DTYPES}")
    for split in data.splits.values():
        for m in MODALITIES:
            x = split.features(m)
            if x.dtype != np.dtype(dtype):
                out = np.empty(x.shape, dtype=dtype)
                for i in range(0, x.shape[0], CHUNK):  # torch's cast: bitwise numpy's, ~8x faster
                    torch.from_numpy(out[i:i + CHUNK]).copy_(torch.from_numpy(np.asarray(x[i:i + CHUNK])))
                setattr(split, m, out)
                del x


def cache_key(fields: dict) -> str:
    """A short hash of the settings and source that decide the cached arrays (``source_stat``)."""
    fields = dict(fields)
    path = fields.get("data_path")
    if path and os.path.exists(path):
        fields["source_stat"] = source_stat(path)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_stat(path: str) -> list:
    """Size and modification time of a data file, or of each file directly in a data folder (what the
    ``.csd`` reader reads; a folder whose files are edited in place keeps its own time). Subfolders,
    such as a ``--feature_cache`` kept inside the data folder, and broken links are not part of it."""
    if not os.path.isdir(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    found = []
    for entry in os.scandir(path):
        try:
            if entry.is_file():
                st = entry.stat()
                found.append([entry.name, st.st_size, st.st_mtime_ns])
        except OSError:  # removed meanwhile
            continue
    return sorted(found)


def cached(folder: str | os.PathLike, key: str, build: Callable[[], tuple[MultimodalData, dict]]
           ) -> tuple[MultimodalData, dict]:
    """``(data, standardization stats)`` from ``folder/key`` when it is complete; otherwise ``build()``
    them, write them there (each array, then ``done.json`` last, so a partial cache is never read)
    and reopen them memory-mapped."""
    root = Path(folder) / key
    if not (root / "done.json").exists():
        data, stats = build()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for s, split in data.splits.items():
                for m in (*MODALITIES, *_SMALL):
                    np.save(root / f"{s}.{m}.npy", getattr(split, m), allow_pickle=False)
            np.savez(root / "stats.npz", **{k: np.asarray(v) for k, v in stats.items()})
            write_json({"name": data.name, "format": data.format, "source": data.source,
                        "splits": list(data.splits)}, root / "done.json")
        except OSError as err:
            raise DataError(f"cannot write the feature cache in {root} ({err.strerror or err}); "
                            "pass another --feature_cache folder or leave it out") from None
        del data
    meta = json.loads((root / "done.json").read_text())
    splits = {}
    for s in meta["splits"]:
        arrays = {m: np.load(root / f"{s}.{m}.npy", mmap_mode="r") for m in MODALITIES}
        small = {k: np.load(root / f"{s}.{k}.npy") for k in _SMALL}
        splits[s] = Split(**arrays, **small)
    with np.load(root / "stats.npz") as z:
        stats = {k: torch.from_numpy(z[k]) for k in z.files}
    return MultimodalData(name=meta["name"], format=meta["format"], source=meta["source"], splits=splits), stats
