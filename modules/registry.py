"""``--model`` names -> model classes, like ``timm.create_model``: one explicit table.

Every model follows the protocol of ``modules.base.MultimodalModel`` (``encode`` without
presence, ``fuse(states, presence)``, unweighted auxiliary losses) and is built as
``cls(cfg, dims)``. A new model is one class in its own file and one line in ``MODELS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modules.attention_robust import AttentionRobustV4
from modules.base import MultimodalModel
from modules.ef_lstm import EFLSTM
from modules.lf_dnn import LFDNN
from modules.tfn import TFN

if TYPE_CHECKING:
    from training.config import Config

MODELS: dict[str, type[MultimodalModel]] = {
    "attention_robust_v4": AttentionRobustV4,
    "ef_lstm": EFLSTM,
    "lf_dnn": LFDNN,
    "tfn": TFN,
}


def available_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, cfg: Config, dims: dict[str, int]) -> MultimodalModel:
    """Build the model named ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[name](cfg, dims)
