"""Atomic writes: a temporary file beside the target, flushed to disk, then renamed onto it.

A kill or a full disk at any moment leaves the old file or the new one, never half of one, and
no temporary file behind. Every file the project writes for later reading (``metrics.json``,
``predictions.npz``, a seed's ``result.json``, checkpoints, the feature cache's ``done.json``,
``tune.py``'s ``best.json``) goes through ``atomic_path``. A Ctrl-C during a checkpoint write takes
effect once the file is whole (``interrupts_deferred``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so ``np.savez`` keeps it) for the block to write;
    when the block ends without an error the file is synced and renamed onto ``path``; in any case
    the temporary file is gone afterwards."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` (``mode`` "w" text or "wb" binary) of an ``atomic_path``: ``path`` gets the whole file or none."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block with Ctrl-C (SIGINT) held back: one that arrives meanwhile is handed to the
    previous handler when the block ends (by default: ``KeyboardInterrupt`` there). For writes that
    call back into Python from C++ (``torch.save``): interrupted inside, they raise a RuntimeError
    instead of the interrupt, and a half-written archive can abort the process when it is collected.
    Outside the main thread, or where SIGINT has no Python handler, the block runs as it is."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    received: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            previous(signal.SIGINT, received[0])


def write_json(obj: Any, path: str | Path) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2)


def write_npz(path: str | Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """``arrays`` as an ``.npz`` archive at ``path`` (zip-deflated when ``compressed``), atomically."""
    with atomic_path(path) as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
