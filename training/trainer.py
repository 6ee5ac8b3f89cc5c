"""One trainer for every registered model: one seed, start to finish.

AdamW, gradient clipping, a learning-rate schedule, train-time modality dropout, early stopping
and best-epoch selection on valid, checkpoints every epoch (``last.pt``, ``best.pt``), resume,
TensorBoard, a non-finite loss guard, then calibration on valid and the test sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from datasets import MODALITIES, MultimodalData, SplitTensors, apply_presence, rate_key, sample_presence
from datasets.batching import (
    BUCKET_LEVELS,
    batch_slices,
    epoch_order,
    length_bucketed,
    to_device,
    trim_to_longest,
)
from modules.losses import distillation_loss, kl_warmup, task_loss
from modules.presence import check_presence, presence_checked
from modules.registry import available_models, create_model
from training.calibration import Calibration, fit_calibration
from training.checkpoint import (
    BEST_KEYS,
    LAST_KEYS,
    CheckpointError,
    load_checkpoint,
    load_weights,
    rng_state,
    save_atomic,
    set_rng_state,
)
from training.config import Config
from training.errors import ConfigError, UserError
from training.evaluate import Evaluator
from training.tta import build_tta

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

# Called after every epoch with (epoch, validation value); may raise to stop (Optuna pruning).
EpochCallback = Callable[[int, float], None]


# An auxiliary term a model returns (unweighted, see modules/base.py) -> the Config field weighting it.
AUX_WEIGHTS = {"recon": "vae_weight", "kl": "kl_weight", "contrastive": "contrastive_weight",
               "aecf_entropy": "entropy_weight"}


def loss_terms(cfg: Config, out: dict, labels: torch.Tensor, kl_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The weighted terms whose sum is the training loss: the task terms (``task_loss``), then each
    auxiliary term of ``out["losses"]`` times its weight (``AUX_WEIGHTS``); ``kl`` also times
    ``kl_scale``, the KL warm-up factor of the epoch (``kl_warmup``)."""
    terms = task_loss(cfg, out, labels)
    for name, value in out.get("losses", {}).items():
        if name not in AUX_WEIGHTS:
            raise KeyError(f"the model returned the loss term {name!r}, which has no weight in AUX_WEIGHTS")
        weight = getattr(cfg, AUX_WEIGHTS[name])
        terms[name] = (weight * kl_scale if name == "kl" else weight) * value
    return terms


class NonFiniteLossError(UserError):
    """A loss term became NaN or Inf; the message names the term, the epoch and the step."""


class CompileError(UserError):
    """``torch.compile`` could not compile the training forward (``--compile``)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a card that is not there
    raises ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def finite_check_per_step(device: torch.device) -> bool:
    """Whether the trainer checks the loss terms for NaN/Inf at each step (on the host, where it is
    free) or once per epoch from device-side records of each term's first bad step (CUDA: no sync)."""
    return device.type == "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Cosine decay with linear warm-up (stepped per batch), plateau (per epoch) or none."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if cfg.scheduler == "none":
            return 1.0
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_diagnostics(diagnostics: dict[str, torch.Tensor], presence: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """One training step's diagnostics as names and one float64 vector, in a few kernels.

    A per-modality value ``(B, 3)`` (e.g. fusion weights) becomes one entry per modality,
    ``"{key}/{modality}"``: its mean over the rows where that modality is present (``presence (B, 3)``
    bool), 0 where no row has it. Any other value (a scalar, or one per row) becomes its mean.
    """
    per = [k for k, v in diagnostics.items() if v.dim() == 2 and v.shape[1] == len(MODALITIES)]
    rest = [k for k in diagnostics if k not in per]
    parts = []
    if per:
        sel = presence.float()
        count = sel.sum(0)
        values = torch.stack([diagnostics[k].detach().float() for k in per])  # (K, B, 3)
        parts.append(torch.where(count > 0, (values * sel).sum(1) / count.clamp(min=1), 0.0).reshape(-1))
    if rest:
        parts.append(torch.stack([diagnostics[k].detach().float().mean() for k in rest]))
    names = [f"{k}/{m}" for k in per for m in MODALITIES] + rest
    return names, (torch.cat(parts) if parts else presence.new_zeros(0, dtype=torch.float)).double()


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.AdamW:
    """AdamW with torch's ``fused`` implementation on every device: a few kernels per step on CUDA,
    one C++ loop on the CPU (the ``foreach`` implementation runs tensor by tensor on the CPU: about
    2,500 more ops per step for the default model). It differs from the per-parameter loop by
    rounding only."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def show_loss(bar: tqdm, loss: torch.Tensor, sent: tuple | None) -> tuple | None:
    """Put the running ``loss`` on the progress ``bar``. On CUDA this makes no host sync: the loss is
    copied to pinned host memory without waiting, and the bar shows the copy sent at the previous
    call once it has arrived (``sent``: its event and host tensor; returns the new pair)."""
    if loss.device.type != "cuda":
        bar.set_postfix(loss=f"{loss.item():.3f}")
        return None
    if sent is not None and sent[0].query():
        bar.set_postfix(loss=f"{sent[1].item():.3f}")
    host = torch.empty((), dtype=loss.dtype, pin_memory=True)
    host.copy_(loss.detach(), non_blocking=True)
    arrived = torch.cuda.Event()
    arrived.record(torch.cuda.current_stream(loss.device))  # the copy's stream, on cuda:N too
    return arrived, host


def compile_failure(err: BaseException) -> tuple[str, str]:
    """What went wrong in a failed ``torch.compile`` and what to do (``""`` or ``"; ..."``), for the one
    line of :class:`CompileError`. On the CPU inductor builds C++ kernels: no compiler is
    ``InvalidCxxCompiler``. A ``CppCompileError`` is the compiler rejecting the code inductor generated
    when its first error points into that ``.cpp`` (torch 2.11 on an AVX-512 CPU did so for
    ``F.cross_entropy`` with ``arange`` targets); any other (a missing header or library, an option
    the compiler lacks, the compiler killed) is the machine's, and its first error is quoted."""
    inner = getattr(err, "inner_exception", None) or err
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    what = f"{type(inner).__name__}: {lines[0] if lines else ''}"
    if type(inner).__name__ == "InvalidCxxCompiler":
        return what, "; on the CPU it builds C++ kernels, which needs a C++ compiler (g++ or clang++)"
    if type(inner).__name__ != "CppCompileError":
        return what, ""
    output = str(inner).split("Output:", 1)[-1]  # not the command line
    generated = re.search(r"\.cpp:\d+:\d+: (error: .*)", output)
    if generated:
        return (f"{what}, {generated[1]}", "; the compiler rejected the kernels torch generated, a torch bug that a "
                "newer torch or ATEN_CPU_CAPABILITY=default (kernels without SIMD) may avoid")
    first = re.search(r"(?:(?:fatal |internal compiler )?error:|cannot find) .*", output)
    return (f"{what}{', ' + first[0] if first else ''}", "; on the CPU it builds C++ kernels, which needs a "
            "working C++ compiler (g++ or clang++) with Python's headers")


@contextlib.contextmanager
def compile_errors(mode: str, where: str) -> Iterator[None]:
    """Turn a failed ``torch.compile`` (``--compile mode``) in the training ``where`` (forward, backward)
    into a one-line :class:`CompileError`; nothing else is caught."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        raise CompileError(f"--compile {mode}: torch.compile failed on the training {where} "
                           "({}){}; run without --compile".format(*compile_failure(err))) from err


class Trainer:
    """Trains ``cfg.model`` on ``data`` for one ``seed``, writing into ``run_dir``.

    ``standardizer`` is the state dict of the train-only statistics; it is stored in every
    checkpoint so evaluation on another file uses the same statistics.
    """

    def __init__(self, cfg: Config, data: MultimodalData, seed: int, run_dir: Path,
                 standardizer: dict | None = None, writer=None, progress: bool = True):
        self.cfg, self.data, self.seed, self.run_dir = cfg, data, seed, Path(run_dir)
        self.standardizer = standardizer or {}
        self.writer = writer
        self.progress = progress
        self.label = f"seed {seed}"  # the progress bars' name; run.py adds "(i of N)"
        self.device = resolve_device(cfg.device)
        seed_everything(seed)
        self.model = create_model(cfg.model, cfg, data.dims).to(self.device)
        # the training forward; the same module and parameters (checkpoints and evaluation use self.model)
        self.forward = self.model if cfg.compile == "none" else torch.compile(self.model, mode=cfg.compile)
        # build_tta refuses a model without the chosen parameters now, not after training
        self.evaluator = Evaluator.from_config(self.model, cfg, self.device, tta=build_tta(cfg, self.model))
        self.autocast = self.evaluator.autocast
        self.optimizer = build_optimizer(cfg, self.model)
        n_train = data.splits["train"].n
        self.steps_per_epoch = n_train // cfg.batch_size + (n_train % cfg.batch_size > 1)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.np_rng = np.random.default_rng(seed)
        self.loader_gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.global_step = 0
        self.best_value = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict] = []
        self._train_tensors: SplitTensors | None = None  # the train split on the device, made once

    # ---- checkpoints ------------------------------------------------------------------------
    def _payload(self) -> dict:
        return {"config": self.cfg.to_dict(), "dims": dict(self.data.dims), "seed": self.seed,
                "standardizer": self.standardizer, "model": self.model.state_dict()}

    def save_last(self) -> None:
        state = self._payload()
        state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     epoch=self.epoch, global_step=self.global_step, best_value=self.best_value,
                     best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, history=self.history,
                     rng=rng_state(self.np_rng, self.loader_gen, self.device))
        save_atomic(state, self.run_dir / "last.pt")

    def save_best(self, calibration: Calibration | None = None) -> None:
        state = self._payload()
        state.update(epoch=self.epoch, best_value=self.best_value)
        if calibration is not None:
            state["calibration"] = calibration.state_dict()
        save_atomic(state, self.run_dir / "best.pt")

    def resume(self) -> bool:
        """Restore from ``run_dir/last.pt`` if there is one; True when restored."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        advice = f"delete {path} to train seed {self.seed} again from its start, or pass --overwrite"
        ck = load_checkpoint(path, map_location=self.device, required=LAST_KEYS, advice=advice)
        load_weights(self.model, ck["model"], path, advice)
        load_weights(self.optimizer, ck["optimizer"], path, advice)
        load_weights(self.scheduler, ck["scheduler"], path, advice)
        self.epoch, self.global_step = ck["epoch"], ck["global_step"]
        self.best_value, self.best_epoch, self.bad_epochs = ck["best_value"], ck["best_epoch"], ck["bad_epochs"]
        self.history = ck["history"]
        set_rng_state(ck["rng"], self.np_rng, self.loader_gen, self.device)
        log.info("seed %d: resumed after epoch %d from %s", self.seed, self.epoch, path)
        return True

    # ---- training ---------------------------------------------------------------------------
    def _non_finite(self, name: str, value: float, epoch: int, step: int) -> NonFiniteLossError:
        last = self.run_dir / "last.pt"
        where = (f"the last good checkpoint is {last} (epoch {self.epoch})" if last.exists() else
                 "no epoch finished, so there is no checkpoint to go back to")
        return NonFiniteLossError(f"loss term '{name}' became {value} at epoch {epoch}, step {step} (seed "
                                  f"{self.seed}); {where}; try a lower --lr or --grad_clip")

    def _check_finite(self, terms: dict[str, torch.Tensor], values: torch.Tensor) -> None:
        """Raise at the first non-finite term of this step (``values``: the terms stacked; one host
        sync per step: the CPU path)."""
        if bool(torch.isfinite(values).all()):
            return
        for name, value in zip(terms, values.tolist()):
            if not math.isfinite(value):
                raise self._non_finite(name, value, self.epoch + 1, self.global_step + 1)

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict:
        """The model's training forward, compiled with ``--compile``; a compilation that fails is a
        one-line CompileError naming the flag, not torch's traceback."""
        if self.forward is self.model:
            return self.model(batch)
        # allow_rnn: dynamo may read the LSTM encoders' nn.LSTM weights without a graph break; the
        # runs themselves stay outside the graph (modules.stacked_lstm.run_lstms)
        with compile_errors(self.cfg.compile, "forward"), torch._dynamo.config.patch(allow_rnn=True):
            return self.forward(batch)

    def _distillation(self, full: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], out: dict,
                      any_lost: bool) -> torch.Tensor:
        """Self-distillation term for the samples that lost a modality to train-time dropout; the
        teacher is this model in eval mode, without gradient, on the batch before dropout. ``any_lost``:
        whether any did, known on the host (the epoch's dropout is drawn there), so no step waits to learn it."""
        if not any_lost:
            return out["score"].new_zeros(())
        lost = (full["presence"] != batch["presence"]).any(dim=1)
        self.model.eval()
        with torch.no_grad():
            teacher = self.model(full)
        self.model.train()
        return distillation_loss(out, teacher, lost)

    def _epoch_presence(self, sizes: list[int]) -> torch.Tensor:
        """(sum(sizes), 3) bool train-time modality dropout for the epoch's batches, drawn from the
        trainer's numpy generator batch by batch in the same order as a per-step draw would."""
        cfg, masks = self.cfg, []
        for b in sizes:
            p = cfg.train_missing_rate
            if cfg.train_missing_schedule == "uniform":
                p = float(self.np_rng.uniform(0.0, cfg.train_missing_rate))
            masks.append(sample_presence(self.np_rng, b, p))
        presence = torch.from_numpy(np.concatenate(masks) if masks else np.zeros((0, 3), dtype=bool))
        check_presence(presence)  # here on the host, once: a compiled forward skips its own check
        return presence

    def train_epoch(self) -> dict[str, float]:
        """One pass over the train split. Batches are gathered on the device with index tensors, the
        dropout masks of the whole epoch are drawn up front and moved once, and loss sums and
        diagnostics stay on the device until the end of the epoch (one host sync per epoch)."""
        from tqdm.auto import tqdm

        cfg, model, dev = self.cfg, self.model, self.device
        model.train()
        kl_scale = kl_warmup(self.epoch, cfg.kl_warmup_epochs)
        train = self.data.splits["train"]
        if self._train_tensors is None:
            self._train_tensors = SplitTensors(train, dev)
        source = self._train_tensors
        slices = batch_slices(train.n, cfg.batch_size, drop_last=train.n % cfg.batch_size == 1)  # no batch of one
        for _ in range(2):  # the two global-RNG draws the DataLoader this replaces made per epoch: same runs per seed
            torch.empty((), dtype=torch.int64).random_()
        order = epoch_order(train.n, self.loader_gen)
        lengths = np.asarray(train.lengths) if cfg.length_buckets else None
        # compiled buckets: few batch shapes (a CUDA graph each), with the lengths dynamic in the graphs
        levels = BUCKET_LEVELS if lengths is not None and self.forward is not self.model else 0
        if lengths is not None:
            order = torch.from_numpy(length_bucketed(order.numpy(), lengths, cfg.batch_size, self.loader_gen))
        order_host = order.numpy()
        if source.resident:  # the batches are gathered where the data is
            order = to_device(order, dev)
        drops = self._epoch_presence([s.stop - s.start for s in slices])
        # the rows dropout takes a modality from, known on the host (the gathered rows have every modality,
        # so these are the rows _distillation selects; with rows already missing one it would be a superset)
        lost = ~drops.numpy().all(axis=1)
        drops = to_device(drops, dev)
        # summed over the epoch on the device, read once at its end: the total loss and every term;
        # the diagnostics (step_diagnostics)
        sums: torch.Tensor | None = None
        diag_names: list[str] = []
        diag_sums: torch.Tensor | None = None
        # off the CPU, non-finite terms are found without a host sync: per term, the first global
        # step where it was not finite (-1: never) and its value there, read once after the epoch
        lazy = not finite_check_per_step(dev)
        if lazy:
            step_no = torch.full((), self.global_step, dtype=torch.long, device=dev)
            first_bad: torch.Tensor | None = None
        bar = tqdm(slices, desc=f"{self.label} epoch {self.epoch + 1}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        shown = None  # on CUDA, the loss last sent to the bar's host copy (show_loss)
        with presence_checked():  # the epoch's masks were checked up front: no host sync per step
            for sl in bar:
                full = source.gather(order[sl])
                # similar lengths: cut the padding every row of the batch has (compiled: the last, smaller
                # batch of the epoch, a shape of its own already, stays at full length)
                if lengths is not None and not (levels and sl.stop - sl.start < cfg.batch_size):
                    full = trim_to_longest(full, lengths[order_host[sl]], levels)
                batch = apply_presence(full, full["presence"] & drops[sl])
                if levels:  # compiled with dynamic lengths at once, not at the second shape
                    for m in MODALITIES:
                        torch._dynamo.maybe_mark_dynamic(batch[m], 1)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
                    out = self._forward(batch)
                    terms = loss_terms(cfg, out, batch["labels"], kl_scale)
                    if cfg.distill_weight > 0:
                        terms["distill"] = cfg.distill_weight * self._distillation(full, batch, out,
                                                                                   bool(lost[sl].any()))
                terms = {k: v.float() for k, v in terms.items()}
                values = torch.stack(list(terms.values()))  # one tensor for the loss, the sums and the NaN record
                if lazy:
                    step_no += 1
                    if first_bad is None:
                        first_bad, first_value = torch.full_like(values, -1, dtype=torch.long), values.detach().clone()
                    new = (first_bad < 0) & ~torch.isfinite(values)
                    first_bad = torch.where(new, step_no, first_bad)
                    first_value = torch.where(new, values.detach(), first_value)
                else:  # free on the host
                    self._check_finite(terms, values)
                loss = values.sum()
                self.optimizer.zero_grad(set_to_none=True)
                with compile_errors(cfg.compile, "backward"):  # compiled: its kernels are built at the first one
                    loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step()
                self.global_step += 1
                step_sums = torch.cat([loss.detach()[None], values.detach()]).double()
                sums = step_sums if sums is None else sums + step_sums
                diag_names, diag = step_diagnostics(out.get("diagnostics", {}), batch["presence"])
                diag_sums = diag if diag_sums is None else diag_sums + diag
                if self.progress and self.global_step % 25 == 0:
                    shown = show_loss(bar, loss, shown)
        n_batches = max(1, len(slices))
        if lazy and first_bad is not None:
            bad = [(s, name, v) for name, s, v in zip(terms, first_bad.tolist(), first_value.tolist()) if s >= 0]
            if bad:
                step, name, value = min(bad, key=lambda b: b[0])  # the earliest; ties in the terms' order
                raise self._non_finite(name, value, self.epoch + 1, step)
        stats = {}
        if sums is not None:  # one device-to-host copy
            names = [f"loss/{k}" for k in ("total", *terms)] + [f"diag/{k}" for k in diag_names]
            stats = {k: v / n_batches for k, v in zip(names, torch.cat([sums, diag_sums]).tolist())}
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        return stats

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        """Train until ``epochs`` or early stopping; ``best.pt`` holds the best validation epoch."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.epoch == 0 and not (self.run_dir / "best.pt").exists():
            self.save_best()  # so an early stop (or 0 epochs) still leaves a model to evaluate
        bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=self.label, disable=not self.progress,
                   dynamic_ncols=True)
        while self.epoch < cfg.epochs:
            if cfg.patience and self.bad_epochs >= cfg.patience:
                break
            stats = self.train_epoch()
            value, per_rate = self.evaluator.validation_score(self.data.splits["valid"], cfg.select_metric)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            self.epoch += 1
            improved = value > self.best_value
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
                self.save_best()
            else:
                self.bad_epochs += 1
            stats.update({f"val/{cfg.select_metric}": value})
            for p, m in per_rate.items():
                for k in ("acc2_non0", "f1_non0", "mae", "ece"):
                    stats[f"val_p{rate_key(p)}/{k}"] = m[k]
            self.history.append({"epoch": self.epoch, **stats})
            self._log(stats)
            self.save_last()
            bar.update(1)
            bar.set_postfix(val=f"{value:.4f}", best=f"{self.best_value:.4f}@{self.best_epoch}")
            if on_epoch is not None:
                on_epoch(self.epoch, value)
        bar.close()

    def _log(self, stats: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in stats.items():
            self.writer.add_scalar(k, v, self.epoch)
        self.writer.flush()

    # ---- after training ---------------------------------------------------------------------
    def load_best(self) -> dict:
        path = self.run_dir / "best.pt"
        advice = f"delete {path} and {path.with_name('last.pt')} to train seed {self.seed} again, or pass --overwrite"
        ck = load_checkpoint(path, map_location=self.device, required=BEST_KEYS, advice=advice)
        load_weights(self.model, ck["model"], path, advice)
        return ck

    def finish(self, splits: tuple[str, ...] = ("valid", "test")) -> dict:
        """Load the best epoch, calibrate on valid, save it, and sweep each split of ``splits``.

        Returns ``{split: sweep, "best_epoch": int, "best_value": float, "calibration": dict}``;
        tuning passes ``("valid",)`` so the test split stays untouched.
        """
        cfg = self.cfg
        self.load_best()
        cal = None
        if cfg.calibrate or cfg.calibrate_score:
            log.info("%s: calibrating the best epoch (%d) on valid", self.label, self.best_epoch)
            cal = fit_calibration(self.evaluator, self.data.splits["valid"], temperature=cfg.calibrate,
                                  score=cfg.calibrate_score, probability=cfg.probability)
        self.save_best(cal)
        # valid: the random-missing sweep and subsets (for tuning and best.json), uncalibrated (the
        # calibration was fitted on valid, so calibrated scores there would be inflated); test: everything
        result: dict = {}
        for name in splits:
            split = self.data.splits[name]
            frames = frame_rates_for(split, cfg.eval_frame_missing_rates) if name == "test" else []
            log.info("%s: evaluating on %s (%d samples): %d missing rates, 7 subsets, %d frame rates", self.label,
                     name, split.n, len(cfg.eval_missing_rates), len(frames))
            evaluator = dataclasses.replace(self.evaluator, calibration=cal if name == "test" else None)
            result[name] = evaluator.sweep(split, cfg.eval_missing_rates, frames)
        result.update(best_epoch=self.best_epoch, best_value=self.best_value,
                      calibration=None if cal is None else {k: v.tolist() for k, v in cal.state_dict().items()})
        return result


def frame_rates_for(split, rates: list[float]) -> list[float]:
    """``rates``, or none when every sequence of ``split`` has one step: frame-level erasure keeps
    one step per sequence, so on length-1 data every rate would repeat the r = 0 row."""
    return list(rates) if int(split.lengths.max()) > 1 else []


def load_for_eval(path: Path, device: torch.device) -> tuple[nn.Module, Config, dict, Calibration, dict[str, int]]:
    """Rebuild a model from a ``best.pt``: (model, config, standardizer state, calibration, dims).

    The model's weights go to ``device``; the standardizer and calibration stay on the host. A file
    that is not a usable checkpoint raises CheckpointError naming it."""
    advice = "point --checkpoint at a best.pt (or a run folder) written by a training run"
    ck = load_checkpoint(path, map_location=device, required=BEST_KEYS, advice=advice)
    try:
        cfg = Config.from_dict(ck["config"])
        if cfg.model not in available_models():
            raise ValueError(f"unknown model {cfg.model!r}")
        dims = {m: int(ck["dims"][m]) for m in ("text", "audio", "vision")}
        cal = Calibration.from_state_dict(ck.get("calibration"))
        standardizer = dict(ck["standardizer"])
        for m in ("text", "audio", "vision"):
            for stat in ("mean", "std"):
                if standardizer and tuple(standardizer[f"{m}.{stat}"].shape) != (dims[m],):
                    raise ValueError(f"standardizer {m}.{stat} has shape {tuple(standardizer[f'{m}.{stat}'].shape)}, "
                                     f"expected ({dims[m]},)")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path} holds an unusable config, dims, standardizer or calibration ({err}); "
                              f"{advice}") from err
    model = create_model(cfg.model, cfg, dims).to(device)
    load_weights(model, ck["model"], path, advice)
    model.eval()
    return model, cfg, standardizer, cal, dims
