"""Torch side: a batched-fetch Dataset over a Split, the loader, and presence application.

A batch is a dict: "text" (B, Lt, Dt), "audio" (B, La, Da), "vision" (B, Lv, Dv) float32,
"lengths" (B, 3) int64, "presence" (B, 3) bool, "labels" (B,) float32, "index" (B,) int64 rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .types import MODALITIES, Split


def apply_presence(batch: dict, presence: torch.Tensor) -> dict:
    """A new batch with ``presence`` (B, 3) bool under "presence" and missing modalities zeroed.

    Features are multiplied by the mask (new tensors); the input batch and its tensors are untouched.
    """
    presence = presence.to(torch.bool)
    out = dict(batch)
    out["presence"] = presence
    for j, m in enumerate(MODALITIES):
        x = batch[m]
        mask = presence[:, j].to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        out[m] = x * mask
    return out


class MultimodalTensorDataset(Dataset):
    """Wraps a Split without copying (torch.from_numpy); items are whole batches.

    ``dataset[indices]`` with a list or 1-D tensor of row numbers returns a batch dict (see module
    docstring); an int returns a batch of one. ``presence`` (N, 3) bool defaults to all present;
    rows' missing modalities are zeroed on fetch.
    """

    def __init__(self, split: Split, presence: np.ndarray | None = None):
        self.split = split
        self.features = {m: torch.from_numpy(split.features(m)) for m in MODALITIES}
        self.lengths = torch.from_numpy(np.ascontiguousarray(split.lengths, dtype=np.int64))
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))
        if presence is None:
            presence = np.ones((split.n, 3), dtype=bool)
        presence = np.asarray(presence, dtype=bool)
        if presence.shape != (split.n, 3):
            raise ValueError(f"presence must have shape ({split.n}, 3), got {presence.shape}")
        self.presence = torch.from_numpy(presence)
        self.all_present = bool(presence.all())

    def __len__(self) -> int:
        return self.split.n

    def __getitem__(self, indices) -> dict:
        if isinstance(indices, int | np.integer):
            indices = [int(indices)]
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        batch = {m: self.features[m][index] for m in MODALITIES}
        batch["lengths"] = self.lengths[index]
        batch["labels"] = self.labels[index]
        batch["index"] = index
        presence = self.presence[index]
        if self.all_present:  # nothing to zero: skip the multiply
            batch["presence"] = presence
            return batch
        return apply_presence(batch, presence)


def make_loader(split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                presence: np.ndarray | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader of batch dicts (batched fetch: BatchSampler as sampler, batch_size=None, no workers).

    ``drop_last`` drops a final incomplete batch (training uses it to avoid a batch of one,
    which BatchNorm cannot normalise)."""
    dataset = MultimodalTensorDataset(split, presence)
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)
