"""Shared fixtures: the real CMU-MOSI files in ../shared/data, skipped with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # on sys.path through pytest's pythonpath setting (pyproject.toml)

SHARED_DATA = Path(os.environ.get("ATTENTION_ROBUST_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHARED_PKL = SHARED_DATA / "mosi_bclstm_dev.pkl"
SHARED_CSD = SHARED_DATA / "mosi_bclstm_dev_csd"
SHARED_SDK_LABELS = SHARED_DATA / "CMU_MOSI_Opinion_Labels.csd"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CMU-MOSI file {path} is absent (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture
def shared_pkl() -> Path:
    return _need(SHARED_PKL)


@pytest.fixture
def shared_csd() -> Path:
    return _need(SHARED_CSD)


@pytest.fixture
def shared_sdk_labels() -> Path:
    return _need(SHARED_SDK_LABELS)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and are not slowed by other jobs on the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
