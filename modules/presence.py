"""The presence mask every model receives: ``(B, 3)`` bool, True = present, T/A/V order."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from datasets.types import MODALITIES

__all__ = ["MODALITIES", "check_presence", "no_modality_error", "presence_checked"]

_checked = contextvars.ContextVar("presence_checked", default=False)  # inside presence_checked(), per thread


@contextlib.contextmanager
def presence_checked() -> Iterator[None]:
    """Within, ``check_presence`` checks shapes only: the caller has checked every mask it passes (the
    trainer its epoch's dropout masks, before the first step), so a step makes no host sync."""
    token = _checked.set(True)
    try:
        yield
    finally:
        _checked.reset(token)


def check_presence(presence: torch.Tensor) -> None:
    """Raise ValueError naming the samples of ``presence (B, 3)`` that have no modality (one host sync).

    Skipped inside ``torch.compile`` (a host sync would split the compiled graph) and within
    ``presence_checked``; the trainer checks the whole epoch's dropout masks once before its first
    step."""
    if presence.dim() != 2 or presence.shape[1] != 3:
        raise ValueError(f"presence must have shape (B, 3), got {tuple(presence.shape)}")
    if torch.compiler.is_compiling() or _checked.get():  # compiling first: the graph never reads the flag
        return
    empty = ~presence.bool().any(dim=1)
    if bool(empty.any()):  # one host sync; the rows are looked up only on error
        raise no_modality_error(empty.nonzero().flatten()[:10].tolist())


def no_modality_error(rows: list[int]) -> ValueError:
    """The error for samples ``rows`` that have no modality present (the first 10 are named)."""
    return ValueError(f"sample(s) {', '.join(map(str, rows[:10]))} have no modality present; "
                      "every sample needs at least one of text, audio, vision")
