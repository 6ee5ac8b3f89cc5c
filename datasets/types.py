"""The in-memory form every reader produces: a ``MultimodalData`` of three ``Split`` objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")  # T, A, V order everywhere
SPLITS: tuple[str, str, str] = ("train", "valid", "test")


@dataclass
class Split:
    """One split of a data set.

    text, audio, vision: float32 (N, L, D), zero-padded after each sample's true length.
    lengths: int64 (N, 3) true lengths (>= 1) in T, A, V order.
    labels: float32 (N,) sentiment in [-3, 3].
    ids: str (N,) sample ids; raw_text: str (N,) transcripts ('' when unknown).
    """

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    raw_text: np.ndarray

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def features(self, m: str | int) -> np.ndarray:
        """The (N, L, D) array of modality ``m`` (a name or an index into MODALITIES)."""
        name = MODALITIES[m] if isinstance(m, int) else m
        if name not in MODALITIES:
            raise KeyError(f"unknown modality {m!r}; expected one of {MODALITIES}")
        return getattr(self, name)


@dataclass
class MultimodalData:
    """A whole data set: ``splits`` maps 'train', 'valid', 'test' to a Split."""

    name: str
    format: str  # 'mmsa' | 'mult' | 'csd' | 'synthetic'
    source: str
    splits: dict[str, Split] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what reading changed or left out (summary, run log)

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension of each modality: {"text": Dt, "audio": Da, "vision": Dv}."""
        train = self.splits["train"]
        return {m: int(train.features(m).shape[2]) for m in MODALITIES}
