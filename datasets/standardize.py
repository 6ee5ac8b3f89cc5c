"""Per-feature standardization with statistics of the TRAIN split only (kept for checkpoints)."""

from __future__ import annotations

import numpy as np
import torch

from .types import MODALITIES, MultimodalData, Split

STD_FLOOR = 1e-6  # features with a smaller std are constant: they get std 1
CHUNK = 512


def valid_mask(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """(B, L) bool: step t of row i lies within lengths[i]."""
    return np.arange(seq_len)[None, :] < lengths[:, None]


class Standardizer:
    """x -> (x - mean) / std per feature, mean/std over the valid steps of the train split."""

    def __init__(self, mean: dict[str, np.ndarray], std: dict[str, np.ndarray]):
        self.mean = {m: np.asarray(mean[m], dtype=np.float32) for m in MODALITIES}
        self.std = {m: np.asarray(std[m], dtype=np.float32) for m in MODALITIES}

    @classmethod
    def fit(cls, train: Split) -> Standardizer:
        """Fit on the valid (within-length) time steps of ``train``; float64 accumulation, chunked."""
        mean, std = {}, {}
        for j, m in enumerate(MODALITIES):
            x = train.features(m)
            total = np.zeros(x.shape[2])
            total_sq = np.zeros(x.shape[2])
            count = 0
            for i in range(0, x.shape[0], CHUNK):
                mask = valid_mask(train.lengths[i:i + CHUNK, j], x.shape[1])
                rows = x[i:i + CHUNK][mask].astype(np.float64)  # (valid steps, D)
                total += rows.sum(0)
                total_sq += (rows * rows).sum(0)
                count += rows.shape[0]
            mu = total / max(count, 1)
            var = np.maximum(total_sq / max(count, 1) - mu * mu, 0.0)
            sd = np.sqrt(var)
            mean[m] = mu
            std[m] = np.where(sd < STD_FLOOR, 1.0, sd)
        return cls(mean, std)

    def apply(self, data: MultimodalData) -> None:
        """Standardize every split of ``data`` in place (chunked, no full copies); padding stays 0."""
        for split in data.splits.values():
            for j, m in enumerate(MODALITIES):
                x = split.features(m)
                for i in range(0, x.shape[0], CHUNK):
                    chunk = x[i:i + CHUNK]
                    chunk -= self.mean[m]
                    chunk /= self.std[m]
                    chunk *= valid_mask(split.lengths[i:i + CHUNK, j], x.shape[1])[:, :, None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"text.mean": (Dt,), "text.std": (Dt,), ...} float32 tensors."""
        out = {}
        for m in MODALITIES:
            out[f"{m}.mean"] = torch.from_numpy(self.mean[m].copy())
            out[f"{m}.std"] = torch.from_numpy(self.std[m].copy())
        return out

    @classmethod
    def from_state_dict(cls, d: dict) -> Standardizer:
        def arr(v):
            return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        return cls({m: arr(d[f"{m}.mean"]) for m in MODALITIES}, {m: arr(d[f"{m}.std"]) for m in MODALITIES})
