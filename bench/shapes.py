"""Generated data at real feature shapes (random features, random true lengths), made in chunks.

MOSI and MOSEI here are the MMSA unaligned layouts: per modality a sequence length and a feature
dimension. ``make_shaped`` builds a ``MultimodalData`` in memory; ``write_mmsa_pickle`` writes an
MMSA pickle (protocol 5, arrays streamed from disk-backed memmaps) without holding the features.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np

from datasets.types import MODALITIES, SPLITS, MultimodalData, Split

# (sequence length, feature dim) per modality, T/A/V; split sizes train/valid/test.
SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "mosi": {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)},
    "mosei": {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)},
}
SIZES: dict[str, tuple[int, int, int]] = {"mosi": (1284, 229, 686), "mosei": (16326, 1871, 4659)}
CHUNK = 256


def feature_bytes(shape: str, sizes: tuple[int, int, int], itemsize: int = 4) -> int:
    """Bytes of the (N, L, D) feature arrays of every split."""
    per_sample = sum(L * D for L, D in SHAPES[shape].values())
    return sum(sizes) * per_sample * itemsize


def scaled(shape: str, scale: float) -> tuple[int, int, int]:
    """Split sizes of ``shape`` times ``scale`` (at least 32 rows each)."""
    return tuple(max(32, round(n * scale)) for n in SIZES[shape])


def _fill(rng: np.random.Generator, x: np.ndarray, lengths: np.ndarray) -> None:
    """Random features in x (N, L, D), chunk by chunk, zero after each row's length."""
    steps = np.arange(x.shape[1])[None, :, None]
    for i in range(0, x.shape[0], CHUNK):
        rows = rng.standard_normal(x[i:i + CHUNK].shape, dtype=np.float32)
        rows *= steps < lengths[i:i + CHUNK, None, None]
        x[i:i + CHUNK] = rows


LENGTHS = ("independent", "duration")  # how true lengths are drawn (``_lengths``)


def _lengths(rng: np.random.Generator, layout: dict, n: int, kind: str) -> np.ndarray:
    """(n, 3) true lengths: ``independent``: each modality's uniform in [L/5, L] on its own;
    ``duration``: one fraction of each row, uniform in [0.2, 1], times every modality's L (real
    audio and video of an utterance follow its duration)."""
    if kind == "independent":
        return np.stack([rng.integers(max(1, layout[m][0] // 5), layout[m][0] + 1, n) for m in MODALITIES], axis=1)
    if kind != "duration":
        raise ValueError(f"unknown lengths {kind!r}; use one of {LENGTHS}")
    frac = rng.uniform(0.2, 1.0, n)
    return np.stack([np.maximum(1, np.round(frac * layout[m][0])).astype(np.int64) for m in MODALITIES], axis=1)


def _split_arrays(rng: np.random.Generator, shape: str | dict, n: int, alloc, lengths: str = "independent") -> dict:
    layout = SHAPES[shape] if isinstance(shape, str) else shape
    lengths = _lengths(rng, layout, n, lengths)
    arrays = {}
    for j, m in enumerate(MODALITIES):
        L, D = layout[m]
        arrays[m] = alloc(m, (n, L, D))
        _fill(rng, arrays[m], lengths[:, j])
    labels = np.clip(rng.normal(0, 1.5, n), -3, 3).astype(np.float32)
    return {"arrays": arrays, "lengths": lengths.astype(np.int64), "labels": labels}


def make_shaped(shape: str | dict, sizes: tuple[int, int, int], seed: int = 0,
                lengths: str = "independent") -> MultimodalData:
    """An in-memory data set with the ``shape`` layout (a name in SHAPES or ``{modality: (L, D)}``),
    split sizes ``sizes`` and true lengths drawn as ``lengths`` (one of ``LENGTHS``)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for s, n in zip(SPLITS, sizes):
        d = _split_arrays(rng, shape, n, lambda m, shp: np.empty(shp, dtype=np.float32), lengths)
        splits[s] = Split(**d["arrays"], lengths=d["lengths"], labels=d["labels"],
                          ids=np.array([f"{s}_{i}" for i in range(n)]), raw_text=np.full(n, "", dtype=str))
    return MultimodalData(name=str(shape), format="synthetic", source=f"generated {shape}", splits=splits)


def write_mmsa_pickle(path: str, shape: str, sizes: tuple[int, int, int], seed: int = 0) -> None:
    """An MMSA pickle ({split: {"text", "audio", "vision", "regression_labels", "id", "raw_text",
    "audio_lengths", "vision_lengths"}}) with the ``shape`` layout, written without holding the
    features in memory: arrays are generated in chunks into memmaps beside ``path`` and pickled
    with protocol 5, which streams each array's buffer."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        obj = {}
        for s, n in zip(SPLITS, sizes):
            d = _split_arrays(rng, shape, n, lambda m, shp, s=s: np.lib.format.open_memmap(
                os.path.join(tmp, f"{s}_{m}.npy"), mode="w+", dtype=np.float32, shape=shp))
            obj[s] = {**{m: np.asarray(a) for m, a in d["arrays"].items()},
                      "regression_labels": d["labels"], "id": np.array([f"{s}_{i}" for i in range(n)]),
                      "raw_text": np.full(n, "", dtype=object),
                      "audio_lengths": d["lengths"][:, 1].tolist(), "vision_lengths": d["lengths"][:, 2].tolist()}
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=5)
