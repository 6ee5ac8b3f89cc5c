"""Test data: one batch factory for model tests, and tiny generated data sets written in the
exact MMSA pickle layout for end-to-end tests."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import make_synthetic
from modules.presence import MODALITIES

DIMS = {"text": 12, "audio": 5, "vision": 7}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def make_batch(B: int = 6, lengths: tuple[int, int, int] = (8, 8, 8), dims: dict[str, int] | None = None,
               seed: int = 0, aligned: bool = False, presence: bool = True) -> dict[str, torch.Tensor]:
    """A model batch: ``text/audio/vision (B, L_m, D_m)`` zero past each row's true length,
    ``lengths (B, 3)`` (drawn in [1, L_m]; row 0 has the full lengths), ``labels (B,)`` in [-3, 3]
    and, with ``presence``, ``presence (B, 3)`` all True. ``aligned``: one length per row for all
    three modalities (needs equal ``lengths``), as in word-aligned data."""
    dims = DIMS if dims is None else dims
    if aligned and len(set(lengths)) != 1:
        raise ValueError(f"aligned=True needs equal lengths, got {lengths}")
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    true_lengths = []
    for m, L in zip(MODALITIES, lengths):
        n = torch.randint(1, L + 1, (B,), generator=g)
        n[0] = L
        if aligned and true_lengths:
            n = true_lengths[0]
        x = torch.randn(B, L, dims[m], generator=g)
        x[torch.arange(L)[None, :] >= n[:, None]] = 0.0
        batch[m] = x
        true_lengths.append(n)
    batch["lengths"] = torch.stack(true_lengths, dim=1)
    batch["labels"] = torch.rand(B, generator=g) * 6 - 3
    if presence:
        batch["presence"] = torch.ones(B, 3, dtype=torch.bool)
    return batch


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


@functools.cache
def _cpu_compile_failure() -> str | None:
    """None when torch.compile (inductor) builds and runs a C++ kernel on this machine's CPU; the reason
    in one line when the C++ build itself fails. Any other error is raised: it is not the machine's."""
    try:
        torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)(torch.randn(8))
    except Exception as err:
        chain, cause = [], err
        while cause is not None:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        if not any(name in text for text in chain for name in ("CppCompileError", "InvalidCxxCompiler",
                                                                 "C++ compile error")):
            raise
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return None


def need_cpu_compile() -> None:
    """Skip a test of compiled training on the CPU where inductor cannot build even a one-line C++
    kernel (no compiler, or no Python headers). There ``--compile`` on the CPU stops with the
    trainer's one-line CompileError, which test_training checks on any machine. A kernel of the
    model's own that the compiler rejects is not a skip but a failure: the GPU machine's
    CppCompileError in these tests (eleventh session) was torch 2.11 generating C++ that did not compile
    for the InfoNCE loss, not the machine (the probe builds there)."""
    why = _cpu_compile_failure()
    if why:
        pytest.skip(f"torch.compile cannot build C++ kernels for this machine's CPU ({why})")
