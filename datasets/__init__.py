"""Data layer: readers (MMSA, MulT, .csd, synthetic), cleaning, standardization, missing protocols, batches.

Every reader produces a ``MultimodalData`` (see types.py); ``load_data`` is the one entry point.
"""

from .batching import (
    MultimodalTensorDataset,
    SplitTensors,
    apply_presence,
    length_bucketed,
    make_loader,
    trim_to_longest,
)
from .errors import DataError
from .load import load_data
from .missing import SUBSETS, frame_keep, frame_missing, modality_masks, rate_key, sample_presence, subset_masks
from .standardize import Standardizer
from .synthetic import make_synthetic
from .types import MODALITIES, MultimodalData, Split

__all__ = [
    "MODALITIES", "Split", "MultimodalData", "DataError", "load_data", "Standardizer", "modality_masks",
    "SUBSETS", "subset_masks", "rate_key", "sample_presence", "frame_keep", "frame_missing", "apply_presence",
    "MultimodalTensorDataset", "SplitTensors", "make_loader", "make_synthetic", "length_bucketed",
    "trim_to_longest",
]
