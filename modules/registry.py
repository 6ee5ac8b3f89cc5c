"""Models register by name (``--model``), like ``timm.create_model``.

A registered model is an ``nn.Module`` built as ``cls(cfg, dims)`` with ``dims`` the feature
size of each modality (``{"text": Dt, "audio": Da, "vision": Dv}``). It provides two stages:

``encode(batch) -> states``
    ``batch`` holds ``text (B, Lt, Dt)``, ``audio (B, La, Da)``, ``vision (B, Lv, Dv)`` and
    ``lengths (B, 3)`` (true lengths, T/A/V order). ``encode`` must not read presence, so that a
    test set can be encoded once and fused under many masks. ``states`` is a dict of tensors
    whose first dimension is B (so the trainer can slice and concatenate it).
``fuse(states, presence) -> out``
    ``presence (B, 3)`` bool, True = present, T/A/V order; every row has at least one True
    (a row without raises ``ValueError``). ``out`` holds ``score (B,)`` (sentiment in [-3, 3]),
    ``logits (B, C)`` (classification head), ``losses`` (dict name -> scalar tensor, already
    weighted; the trainer adds them to the task loss) and ``diagnostics`` (dict name -> tensor,
    logged to TensorBoard after a mean).

The trainer, evaluation and report never branch on which model runs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        known = _MODELS.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"model {name!r} is registered twice ({known.__module__} and {cls.__module__})")
        # the same class again: a file run as a script (``__main__``) and imported by name; the
        # imported one wins so checkpoints and isinstance checks see one class
        if known is None or cls.__module__ != "__main__":
            _MODELS[name] = cls
        return cls
    return deco


def available_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)


def create_model(name: str, cfg, dims: dict[str, int]) -> nn.Module:
    """Build the model registered as ``name``; unknown names raise ValueError listing the known."""
    _import_all()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](cfg, dims)


def _import_all() -> None:
    """Import every module that registers a model (registration happens at import)."""
    import importlib
    import pkgutil

    import modules

    importlib.import_module("attention_robust_v4")
    for info in pkgutil.iter_modules(modules.__path__):
        importlib.import_module(f"modules.{info.name}")
