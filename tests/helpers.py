"""Small generated data sets written in the exact MMSA pickle layout, for end-to-end tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from datasets import make_synthetic


def mmsa_dict(data) -> dict:
    """The MMSA ``aligned_50.pkl`` layout of a MultimodalData (classification labels 0/1/2)."""
    out = {}
    for name, s in data.splits.items():
        out[name] = {
            "id": np.asarray(s.ids), "raw_text": np.asarray(s.raw_text),
            "text": s.text.astype(np.float32), "audio": s.audio.astype(np.float32),
            "vision": s.vision.astype(np.float32),
            "regression_labels": s.labels.astype(np.float32),
            "classification_labels": (np.sign(s.labels) + 1).astype(np.float32),
            "audio_lengths": [int(v) for v in s.lengths[:, 1]],
            "vision_lengths": [int(v) for v in s.lengths[:, 2]],
        }
    return out


def tiny_pickle(path: Path, seed: int = 0, n: tuple[int, int, int] = (96, 48, 64), seq_len: int = 6,
                dims: tuple[int, int, int] = (12, 5, 8), edit=None) -> Path:
    """Write a tiny generated data set as an MMSA pickle; ``edit(dict)`` may corrupt it first."""
    data = make_synthetic(seed=seed, n_train=n[0], n_valid=n[1], n_test=n[2], seq_len=seq_len, dims=dims)
    d = mmsa_dict(data)
    if edit is not None:
        edit(d)
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=4)
    return path


def tiny_args(data_path: Path, out: Path, *extra: str) -> list[str]:
    """CLI flags for a fast run on a tiny file: 2 epochs, small model, no progress bars."""
    return ["--data_path", str(data_path), "--output_dir", str(out), "--epochs", "2", "--batch_size", "16",
            "--hidden_dim", "16", "--num_heads", "2", "--seeds", "7", "--quiet", "--no_tensorboard",
            "--eval_missing_rates", "0.0", "0.3", "0.5", "--eval_frame_missing_rates", "0.0", "0.5", *extra]
