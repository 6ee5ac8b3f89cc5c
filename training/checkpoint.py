"""Atomic checkpoints (temp file + rename) loaded with ``weights_only=True``, and RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so the safe loader
reads it: the config as a dict, the standardization statistics, the model and optimizer state,
and the RNG states that make ``--resume`` reproduce an uninterrupted run.
"""

from __future__ import annotations

import pickle
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.atomic import atomic_open, interrupts_deferred
from training.errors import UserError, writing

# What lives on the device once loaded; everything else (RNG states, calibration, standardizer,
# numbers, the config) stays on the host, whatever ``map_location`` says.
DEVICE_KEYS = ("model", "optimizer")
BEST_KEYS = ("config", "dims", "standardizer", "model")
LAST_KEYS = (*BEST_KEYS, "optimizer", "scheduler", "epoch", "global_step", "best_value", "best_epoch",
             "bad_epochs", "history", "rng")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not hold what is needed."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that a kill at any moment leaves the old file or the new one; a
    Ctrl-C meanwhile raises ``KeyboardInterrupt`` once the new one is in place."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with interrupts_deferred(), atomic_open(path, "wb") as fh:
            torch.save(obj, fh)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: Sequence[str] = (), advice: str = "") -> dict[str, Any]:
    """Load with ``weights_only=True`` onto the host; then only the model and optimizer state go to
    ``map_location``. A missing or broken file, or one without the ``required`` keys, raises
    CheckpointError naming the file (and ``advice``, what to do)."""
    path = Path(path)
    advice = f"; {advice}" if advice else ""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist{advice}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the safe loader met something other than tensors and plain values
        # torch's message advises weights_only=False; the reason is the line after "WeightsUnpickler error:"
        lines = [s.strip() for s in str(err).split("WeightsUnpickler error:")[-1].splitlines() if s.strip()]
        raise CheckpointError(f"cannot read checkpoint {path}: not a checkpoint of this project (torch's safe "
                              f"loader: {lines[0] if lines else type(err).__name__}){advice}") from err
    except Exception as err:  # torch raises several kinds for truncated or foreign files
        first = str(err).strip().splitlines()[0][:150] if str(err).strip() else ""
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, or not a checkpoint of this project "
                              f"({type(err).__name__}{': ' + first if first else ''}){advice}") from err
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path} holds a {type(ck).__name__}, not a checkpoint of this project{advice}")
    missing = [k for k in required if k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint of this project (no "
                              f"{', '.join(map(repr, missing))}){advice}")
    if torch.device(map_location) != torch.device("cpu"):
        for key in DEVICE_KEYS:
            if key in ck:
                ck[key] = _to_device(ck[key], map_location)
    return ck


def load_weights(module: nn.Module | torch.optim.Optimizer, state: Any, path: str | Path, advice: str = "") -> None:
    """``module.load_state_dict(state)``; a state that does not fit raises CheckpointError naming ``path``."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = "optimizer state" if isinstance(module, torch.optim.Optimizer) else "weights"
        raise CheckpointError(f"the {what} in {path} do not fit the model its config describes ({first}); "
                              f"the file is damaged or from another version{'; ' + advice if advice else ''}") from err


def _to_device(obj: Any, device: str | torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def rng_state(np_rng: np.random.Generator, loader_gen: torch.Generator,
              device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG a training run on ``device`` draws from, in a form ``weights_only`` loading accepts:
    on a CUDA device also that card's generator (``cuda_device``); a CPU run leaves CUDA untouched."""
    state = {
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
        "numpy": _to_plain(np_rng.bit_generator.state),
        "python": _to_plain(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], np_rng: np.random.Generator, loader_gen: torch.Generator,
                  device: torch.device | None = None) -> None:
    """Restore what ``rng_state`` captured (RNG states are host tensors wherever the model runs). The
    saved card's generator goes to ``device``, whichever card that is now; a checkpoint of an older
    version holds every card's (``cuda``): ``device``'s own, or the first card's when it had fewer."""
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    loader_gen.set_state(torch.as_tensor(state["loader"]).cpu())
    np_rng.bit_generator.state = state["numpy"]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device is None or device.type != "cuda":
        return
    saved = state.get("cuda_device")
    if saved is None and state.get("cuda"):
        cards, index = state["cuda"], device.index if device.index is not None else torch.cuda.current_device()
        saved = cards[index] if index < len(cards) else cards[0]
    if saved is not None:
        torch.cuda.set_rng_state(torch.as_tensor(saved).cpu(), device)


def _to_plain(obj: Any) -> Any:
    """Tuples -> lists and numpy ints -> int, recursively (weights_only loads plain containers)."""
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
