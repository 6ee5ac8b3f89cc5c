"""Test-time adaptation of the evaluation sweep: TENT (Wang et al., ICLR 2021), episodic.

``--tta tent``: for every evaluation batch (``--batch_size`` rows in split order), under every
presence mask of the sweep and every subset, the parameters chosen by ``--tta_params`` take
``--tta_steps`` Adam steps (``--tta_lr``) that minimise the mean entropy of the class head's
softmax on that batch (no labels), and the batch is predicted with the adapted weights. Before
every batch the weights are back at the trained ones (episodic), so the order of the test set
cannot leak from one batch into another and the results are deterministic for a seed.

Parameter sets (``--tta_params``):

* ``norm``: weight and bias of every normalisation layer (LayerNorm, BatchNorm, GroupNorm,
  InstanceNorm) in the model, encoders included;
* ``fusion``: the parameters of the model's ``fusion`` module (the learned gate of the gated
  uncertainty fusion);
* ``norm+fusion``: both. A model without the named kind of parameter is refused in one line.

The model stays in eval mode: dropout off, ``z = mu``, and BatchNorm keeps its running
statistics (TENT proper re-estimates them from each test batch; here only affine parameters
move, as the design notes ask for adaptation in eval mode).

Where it acts, and its cost. Evaluation encodes a split once and fuses those states under 15
masks (``training/evaluate.py``). When no chosen parameter acts in ``encode`` (``fusion``; or
``norm`` for the baselines, whose normalisation lives in ``fuse``), adaptation reuses the encoded
states: per batch and mask it costs ``steps`` fuse forward+backward passes and one fuse. When
some act in ``encode`` (the encoder LayerNorms of ``attention_robust_v4`` under ``norm``), each
batch is re-encoded from its features at every step and for the final prediction, under every
mask: the encoder then runs ``15 x (steps + 1)`` times per split instead of once. Which case
applies is found by autograd on the first batch (does an encoder output depend on a chosen
parameter?), not from the model's name. ``python -m bench eval_sweep`` measures both.

Missing modalities: presence acts only in ``fuse``, which replaces a missing modality's states
by constants, so the entropy has an exactly zero gradient through that modality's features and
encoder, and Adam does not move a parameter whose gradient is zero: a missing modality still
cannot change any output (``tests/test_tta.py`` checks it bitwise).

Validation-based selection (the best epoch, early stopping) and the calibration fit never use
adaptation; the validation and test sweeps do, so ``--tta`` settings can be compared on valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datasets import MultimodalTensorDataset, Split, SplitTensors
from training.errors import ConfigError

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
PARAM_SETS = ("norm", "fusion", "norm+fusion")


def tta_parameters(model: nn.Module, which: str) -> dict[str, nn.Parameter]:
    """The parameters ``which`` (one of ``PARAM_SETS``) names, by their ``named_parameters`` name.

    Raises ConfigError (a ValueError) when the model has none of a named kind.
    """
    if which not in PARAM_SETS:
        raise ConfigError(f"unknown --tta_params {which!r}; choose one of {', '.join(PARAM_SETS)}")
    chosen: set[int] = set()
    for part in which.split("+"):
        if part == "norm":
            found = [p for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)]
            what = "normalisation layer with affine parameters"
        else:
            fusion = getattr(model, "fusion", None)
            found = list(fusion.parameters()) if isinstance(fusion, nn.Module) else []
            what = "learned fusion gate (a `fusion` module with parameters)"
        if not found:
            raise ConfigError(f"--tta_params {which}: model {type(model).__name__} has no {what}; "
                             f"choose another --tta_params or --tta none")
        chosen.update(id(p) for p in found)
    return {n: p for n, p in model.named_parameters() if id(p) in chosen}


def prediction_entropy(logits: Tensor) -> Tensor:
    """Mean over the batch of the entropy (nats) of ``softmax(logits (B, C))`` -> scalar."""
    # no argument check: logits a diverging adaptation made NaN give a NaN entropy, caught after its steps
    return torch.distributions.Categorical(logits=logits.float(), validate_args=False).entropy().mean()


class Tent:
    """Episodic entropy minimisation of ``params`` of ``model`` on one evaluation batch at a time.

    ``tent(states, presence, source, rows) -> out`` adapts on the batch and returns the model's
    ``fuse`` output with the adapted weights, then restores the weights it found. ``states`` are
    the encoded rows ``rows`` of ``source`` (dict of tensors with first dimension B),
    ``presence (B, 3)`` bool; ``source`` (a Split, or the ``SplitTensors`` an evaluation gathers
    from, frame-level erasure included) gives the features when a chosen parameter acts in encode.
    """

    def __init__(self, model: nn.Module, params: str = "norm", steps: int = 1, lr: float = 1e-3):
        if steps < 1 or lr <= 0:
            raise ConfigError(f"test-time adaptation needs steps >= 1 and lr > 0 (got {steps}, {lr})")
        self.model, self.which, self.steps, self.lr = model, params, steps, lr
        self.params = tta_parameters(model, params)
        self.in_encode: bool | None = None  # found on the first batch

    def _acts_in_encode(self, batch: dict[str, Tensor]) -> bool:
        with torch.enable_grad():
            outs = [v for v in self.model.encode(batch).values() if v.requires_grad]
            if not outs:
                return False
            grads = torch.autograd.grad(sum(o.float().sum() for o in outs), list(self.params.values()),
                                        allow_unused=True)
        return any(g is not None for g in grads)

    def __call__(self, states: dict[str, Tensor], presence: Tensor, source: Split | SplitTensors,
                 rows: range) -> dict[str, Any]:
        model = self.model
        model.eval()
        device = presence.device
        if self.in_encode is None:
            self.in_encode = self._acts_in_encode(self._features(source, rows, device))
        if self.in_encode:
            batch = self._features(source, rows, device)
            forward: Callable[[], dict] = lambda: model.fuse(model.encode(batch), presence)
        else:
            forward = lambda: model.fuse(states, presence)
        trained = {n: p.detach().clone() for n, p in self.params.items()}
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            for n, p in model.named_parameters():
                p.requires_grad_(n in self.params)
            with torch.enable_grad():
                optimizer = torch.optim.Adam(self.params.values(), lr=self.lr)
                for _ in range(self.steps):
                    loss = prediction_entropy(forward()["logits"])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            with torch.no_grad():
                out = forward()
            if not bool(torch.isfinite(out["logits"]).all() & torch.isfinite(out["score"]).all()):
                raise ConfigError(f"test-time adaptation made the predictions NaN or Inf (--tta_lr {self.lr:g}, "
                                  f"--tta_steps {self.steps}, --tta_params {self.which}); lower --tta_lr")
            return out
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(trained[n])
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])

    @staticmethod
    def _features(source: Split | SplitTensors, rows: range, device: torch.device) -> dict[str, Tensor]:
        index = np.arange(rows.start, rows.stop)
        batch = (source.gather(torch.from_numpy(index)) if isinstance(source, SplitTensors)
                 else MultimodalTensorDataset(source)[index])
        return {k: v.to(device) for k, v in batch.items() if k not in ("presence", "index")}


def build_tta(cfg, model: nn.Module) -> Tent | None:
    """The adaptation ``cfg.tta`` asks for (None for ``"none"``); refuses a model without the
    chosen parameters in one line (ConfigError)."""
    if cfg.tta == "none":
        return None
    if cfg.tta != "tent":
        raise ConfigError(f"unknown --tta {cfg.tta!r}; choose none or tent")
    return Tent(model, cfg.tta_params, cfg.tta_steps, cfg.tta_lr)
