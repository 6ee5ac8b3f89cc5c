"""Shared fixtures: the real CMU-MOSI files in ../shared/data, skipped with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # on sys.path through pytest's pythonpath setting (pyproject.toml)

# Under pytest-xdist (``pytest -n N``) every worker, and every process a test starts, gets its share
# of the cores: N workers with a thread per core each would oversubscribe the CPU many times over.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


@pytest.fixture(autouse=True)
def _torch_threads_as_found():
    """Commands run in-process (``--threads``, ``bench.probability``) set torch's threads for the whole
    process; put them back, so a later test that compares an in-process run with a subprocess run
    bit for bit (the resume tests) sees the same reductions."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
