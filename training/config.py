"""The one configuration dataclass: argparse fills it, Optuna trials fill it, checkpoints store it.

Every field is a command-line flag of the same name (``--hidden_dim 128``). Boolean fields take
both ``--name`` and ``--no_name`` (the field ``tensorboard`` gives ``--no_tensorboard``). Each
field's metadata is the one place that describes it: ``help`` (the flag's help text), ``choices``,
``group`` (the ``--help`` section, one of ``GROUPS``), ``kind`` (tags from ``KINDS``: what the
field is to tuning, resuming and saved commands) and ``needs`` (the switch whose component it
tunes). Every list of fields elsewhere (``SEARCHABLE``, ``RESUMABLE_CHANGES``, ``FEATURE_PARAMS``,
``RUN_FIELDS``, the switches ``config_to_argv`` always writes, ``train_v4.sh``'s variables) is
derived from that metadata.

``--config FILE.yaml`` (or ``.json``) sets fields from a file; flags given beside it win.
``python -m training.config --env-args`` prints the flags that upper-case environment variables
set (``HIDDEN_DIM=64`` -> ``--hidden_dim 64``, ``USE_VAE=0`` -> ``--no_use_vae``): ``train_v4.sh``;
and says so on stderr, so that a variable set for something else does not change a run unseen.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import shlex
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import ConfigError
from training.objectives import OBJECTIVES

DEFAULT_RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]

# --help sections, in order: group -> title
GROUPS = {"data": "data", "model": "model", "loss": "task and losses", "train": "training",
          "eval": "evaluation", "run": "run"}
# the tags a field's ``kind`` may hold
KINDS = {
    "search": "tune.py may search it",
    "switch": "turns a component on or off (a bool, or a weight whose 0 turns it off): a saved command "
              "always spells it out, so it keeps its meaning when a default flips",
    "resumable": "may differ when a run is resumed: how it runs, not what it trains or measures",
    "run": "where and how a run writes and prints; never changes a result",
    "preprocess": "how the features are prepared before the model sees them (shapes the training data)",
}
RUNS_ROOT = "runs"  # where runs without --output_dir go


def _f(default: Any, help: str, choices: list | None = None, *, group: str | None = None, kind: str = "",
       needs: str | None = None, **kw: Any) -> Any:
    """A Config field: ``group`` is its --help section (required, one of ``GROUPS``), ``kind`` its
    space-separated tags from ``KINDS``, ``needs`` the switch field it belongs to."""
    meta: dict[str, Any] = {"help": help, "group": group, "kind": frozenset(kind.split())}
    if choices is not None:
        meta["choices"] = choices
    if needs is not None:
        meta["needs"] = needs
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class Config:
    # ---- data -------------------------------------------------------------------------------
    dataset: str = _f("synthetic", "named data set; 'synthetic' generates the embedded MOSI-shaped set",
                      ["synthetic", "mosi", "mosei"], group="data")
    data_path: str | None = _f(None, "an MMSA or MulT pickle, or a folder of .csd files", group="data")
    data_format: str = _f("auto", "format of --data_path; 'auto' detects it", ["auto", "mmsa", "mult", "csd"],
                          group="data")
    synthetic_seed: int = _f(0, "seed of the generated embedded data set", group="data")
    nan_policy: str = _f("error", "NaN/+inf in input features: 'error' refuses the file, 'zero' replaces "
                         "them with 0 (-inf, the MOSEI audio artefact, is always replaced)", ["error", "zero"],
                         group="data", kind="preprocess")
    standardize: bool = _f(True, "per-feature standardization fitted on the train split only",
                           group="data", kind="switch preprocess")
    feature_dtype: str = _f("float32", "storage of the features in memory (batches are computed in float32); "
                            "float16 halves the memory, after standardization", ["float32", "float16"],
                            group="data", kind="preprocess")
    feature_cache: str | None = _f(None, "folder for a cache of the cleaned, standardized splits as memory-mapped "
                                   ".npy files, written once and reused: memory no longer grows with N",
                                   group="data")
    # ---- model ------------------------------------------------------------------------------
    model: str = _f("attention_robust_v4", "model name (attention_robust_v4 or a baseline)", group="model")
    encoder: str = _f("mlp", "variational encoder kind", ["mlp", "lstm", "cfc"], group="model", kind="search")
    hidden_dim: int = _f(128, "width of every modality state", group="model", kind="search")
    dropout: float = _f(0.3, "dropout inside encoders and heads", group="model", kind="search")
    bidirectional: bool = _f(True, "bidirectional LSTM encoder", group="model", kind="switch search")
    num_heads: int = _f(4, "attention heads of the proxy attention and the AECF pool", group="model", kind="search")
    variational: bool = _f(True, "sample z ~ N(mu, std) in training (off: z = mu)", group="model",
                           kind="switch search")
    use_gated_fusion: bool = _f(True, "gated uncertainty fusion (off: plain inverse-variance weights)",
                                group="model", kind="switch search")
    gate_alpha: float = _f(0.5, "w = alpha * w_uncertainty + (1 - alpha) * w_gate", group="model", kind="search",
                           needs="use_gated_fusion")
    fusion_temperature: float = _f(1.0, "temperature of the inverse-std softmax", group="model", kind="search")
    use_proxy_attention: bool = _f(True, "fused proxy queries the modality tokens", group="model",
                                   kind="switch search")
    use_aecf: bool = _f(False, "AECF entropy-driven curriculum masking of attention weights (off by default: "
                        "it did not raise validation robustness on real MOSI, see README)", group="model",
                        kind="switch search")
    aecf_mask_prob: float = _f(0.15, "AECF base masking probability", group="model", kind="search",
                               needs="use_aecf")
    aecf_entropy_target: float = _f(0.7, "AECF target normalised attention entropy", group="model", kind="search",
                                    needs="use_aecf")
    aecf_min_active: int = _f(1, "AECF never masks below this many present modalities", group="model",
                              kind="search", needs="use_aecf")
    entropy_weight: float = _f(0.01, "weight of the AECF entropy loss", group="loss", kind="search",
                               needs="use_aecf")
    # ---- task and losses --------------------------------------------------------------------
    task: str = _f("regression", "what the reported predictions come from: the score head or "
                   "the class head's expected value", ["regression", "classification"], group="loss",
                   kind="search")
    num_classes: int = _f(2, "classes of the classification head", [2, 3, 7], group="loss", kind="search")
    reg_loss: str = _f("l1", "regression loss on the score", ["l1", "mse"], group="loss", kind="search")
    reg_weight: float = _f(1.0, "weight of the regression loss", group="loss", kind="search")
    cls_weight: float = _f(0.5, "weight of the focal label-smoothing classification loss", group="loss",
                           kind="search")
    focal_gamma: float = _f(2.0, "focal loss gamma (0: plain cross-entropy)", group="loss", kind="search")
    label_smoothing: float = _f(0.1, "label smoothing of the classification loss", group="loss", kind="search")
    use_vae: bool = _f(True, "VAE loss: reconstruction of present modalities + KL", group="loss",
                       kind="switch search")
    vae_weight: float = _f(0.1, "weight of the reconstruction term", group="loss", kind="search", needs="use_vae")
    kl_weight: float = _f(1e-3, "weight of the KL term (after warm-up)", group="loss", kind="search",
                          needs="use_vae")
    kl_warmup_epochs: int = _f(5, "epochs of linear KL warm-up", group="loss", kind="search", needs="use_vae")
    use_contrastive: bool = _f(True, "cross-modal InfoNCE between present modality pairs", group="loss",
                               kind="switch search")
    contrastive_weight: float = _f(0.1, "weight of the InfoNCE loss", group="loss", kind="search",
                                   needs="use_contrastive")
    contrastive_temperature: float = _f(0.1, "InfoNCE temperature", group="loss", kind="search",
                                        needs="use_contrastive")
    unimodal_weight: float = _f(0.0, "weight of the unimodal supervision: a linear probe per modality predicts "
                                "the label from that modality's mean alone (0 disables)", group="loss",
                                kind="switch search")
    # ---- training ---------------------------------------------------------------------------
    seeds: list[int] = _f([1111, 1112, 1113], "one training run per seed; results are mean and std",
                          group="train", kind="resumable")
    epochs: int = _f(30, "maximum training epochs", group="train", kind="search")
    batch_size: int = _f(32, "batch size", group="train", kind="search")
    lr: float = _f(1e-3, "AdamW learning rate", group="train", kind="search")
    weight_decay: float = _f(1e-4, "AdamW weight decay", group="train", kind="search")
    grad_clip: float = _f(1.0, "gradient norm clip (0 disables)", group="train", kind="search")
    scheduler: str = _f("cosine", "learning-rate schedule", ["cosine", "plateau", "none"], group="train",
                        kind="search")
    warmup_epochs: int = _f(1, "linear learning-rate warm-up epochs (cosine schedule)", group="train",
                            kind="search")
    patience: int = _f(8, "early stopping patience in epochs (0 disables)", group="train", kind="search")
    select_metric: str = _f("f1_robust", "validation metric for best-epoch selection and early stopping: "
                            "f1_robust = mean F1 non-0 over missing rates 0, .3, .5, .7",
                            list(OBJECTIVES), group="train")
    train_missing_rate: float = _f(0.7, "train-time modality dropout rate (0 disables)", group="train",
                                   kind="search")
    train_missing_schedule: str = _f("uniform", "'uniform': each batch draws p ~ U(0, rate); "
                                     "'fixed': every batch uses the rate", ["uniform", "fixed"], group="train",
                                     kind="search")
    length_buckets: bool = _f(False, "batch training rows of similar length (sorted by their longest "
                              "modality within windows of 64 batches, the batches shuffled) and cut each batch "
                              "to its longest row: fewer padded steps for long, varied sequences (MOSEI); it "
                              "changes which rows share a batch; with --compile each batch is cut to one of 7 "
                              "fractions of the padded lengths instead (at most 8 batch shapes)", group="train")
    distill_weight: float = _f(0.0, "self-distillation: pull each prediction made with train-time dropped "
                               "modalities toward the same model's prediction with all of the sample's "
                               "modalities (eval mode, no gradient); weight of that KL + L1 term (0 disables)",
                               group="loss", kind="switch search")
    device: str = _f("auto", "compute device: auto (CUDA when present), cpu, cuda or cuda:N (card N)",
                     group="run", kind="resumable")
    amp: bool = _f(False, "automatic mixed precision (CUDA only)", group="run", kind="resumable")
    compile: str = _f("none", "torch.compile the model's training forward: 'default' fuses its many small "
                      "ops into few kernels, 'reduce-overhead' also replays them as CUDA graphs; the first "
                      "steps pay the compilation (about a minute), so it pays on large data on a GPU; with --encoder "
                      "lstm the LSTM calls stay cuDNN's and everything around them is compiled",
                      ["none", "default", "reduce-overhead"], group="run", kind="resumable")
    stack_lstm: bool = _f(False, "with --encoder lstm, run LSTM directions of equal length as one block-diagonal "
                          "LSTM of at most 128 units (cuDNN's persistent small-hidden kernel): the same outputs "
                          "up to rounding; at the default width each modality's two directions become one run "
                          "(3 runs instead of 6), at twice the recurrent arithmetic; 0.86x on a 2-core CPU, "
                          "not yet measured on a GPU, hence off by default", group="run", kind="resumable")
    # ---- evaluation -------------------------------------------------------------------------
    eval_missing_rates: list[float] = _f(DEFAULT_RATES, "random modality-missing rates of the test sweep",
                                         group="eval")
    eval_frame_missing_rates: list[float] = _f(DEFAULT_RATES, "frame-level missing rates of the test sweep",
                                               group="eval")
    calibrate: bool = _f(True, "per-presence-pattern temperature scaling of the class head, fitted on valid",
                         group="eval", kind="switch search")
    calibrate_score: bool = _f(True, "per-presence-pattern affine correction (a >= 0) of the score, fitted on "
                               "valid: shrinks patterns that carry no signal on new videos toward the prior",
                               group="eval", kind="switch search")
    probability: str = _f("class", "the reported P(positive) (Brier, NLL, ECE, calibration.png, risk-coverage): "
                          "'score' = Platt map of the score per presence pattern shrunk toward the pooled fit, "
                          "'class' = class head with per-pattern temperature, 'blend' = their mix with a "
                          "weight fitted on valid (needs --calibrate or --calibrate_score; else the raw "
                          "class head)", ["score", "class", "blend"], group="eval")
    ensemble: bool = _f(True, "with several seeds, also report the deep ensemble (mean of the seeds' "
                        "calibrated scores and P(positive)) as its own section, never mixed into mean ± std",
                        group="eval")
    tta: str = _f("none", "test-time adaptation of the valid and test sweeps (training/tta.py): 'tent' "
                  "minimises the class head's prediction entropy on each evaluation batch, episodically "
                  "(weights reset per batch); never used for epoch selection or calibration", ["none", "tent"],
                  group="eval")
    tta_steps: int = _f(1, "optimiser steps of test-time adaptation per evaluation batch", group="eval")
    tta_lr: float = _f(1e-3, "Adam learning rate of test-time adaptation", group="eval")
    tta_params: str = _f("norm", "what test-time adaptation may change: the affine parameters of every "
                         "normalisation layer, the fusion gate, or both", ["norm", "fusion", "norm+fusion"],
                         group="eval")
    # ---- run --------------------------------------------------------------------------------
    output_dir: str | None = _f(None, "where every artefact goes (default: a new folder "
                                "runs/<model>_<data>_<YYYYmmdd-HHMMSS>, linked as runs/latest)",
                                group="run", kind="run resumable")
    eval_only: bool = _f(False, "evaluate --checkpoint without training", group="run")
    checkpoint: str | None = _f(None, "checkpoint to evaluate with --eval_only", group="run")
    resume: bool = _f(False, "continue an interrupted run in --output_dir from its last checkpoint", group="run",
                      kind="run resumable")
    overwrite: bool = _f(False, "replace a finished or interrupted run already in --output_dir", group="run",
                         kind="run resumable")
    quiet: bool = _f(False, "no progress bars; the final table only", group="run", kind="run resumable")
    tensorboard: bool = _f(True, "TensorBoard logs in OUTPUT_DIR/tb", group="run", kind="run resumable")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate(saved=True)
        return cfg

    def validate(self, saved: bool = False) -> None:
        """Raise ConfigError (a ValueError) naming the first setting out of its range.

        ``saved``: the settings of a run written earlier (``config.json``, a checkpoint). Values that
        earlier versions accepted and trained with (an infinite float, a negative warm-up) are refused
        for new runs only, so such runs still resume and evaluate as they were trained."""
        for f in dataclasses.fields(self):  # what every field's type and metadata already say
            value = getattr(self, f.name)
            items = value if isinstance(value, list) else [value]
            choices = f.metadata.get("choices")
            if choices is not None and not all(v in choices for v in items):
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value}")
            if not saved and any(isinstance(v, float) and not math.isfinite(v) for v in items):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
            if not saved and isinstance(value, str) and not value.strip():  # "" is no path: it would mean "here"
                raise ConfigError(f"--{f.name} is empty; give a value or leave the flag out")
        checks = [
            (self.hidden_dim > 0, "hidden_dim must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)"),
            (self.num_heads > 0 and self.hidden_dim % self.num_heads == 0,
             "hidden_dim must be a multiple of num_heads"),
            (0.0 <= self.gate_alpha <= 1.0, "gate_alpha must lie in [0, 1]"),
            (self.fusion_temperature > 0, "fusion_temperature must be > 0"),
            (0.0 <= self.aecf_mask_prob <= 1.0, "aecf_mask_prob must lie in [0, 1]"),
            (0.0 <= self.aecf_entropy_target <= 1.0, "aecf_entropy_target must lie in [0, 1]"),
            (1 <= self.aecf_min_active <= 3, "aecf_min_active must lie in [1, 3]"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must lie in [0, 1)"),
            (self.focal_gamma >= 0, "focal_gamma must be >= 0"),
            (self.contrastive_temperature > 0, "contrastive_temperature must be > 0"),
            (min(self.reg_weight, self.cls_weight, self.vae_weight, self.kl_weight,
                 self.contrastive_weight, self.entropy_weight, self.distill_weight,
                 self.unimodal_weight) >= 0,
             "loss weights must be >= 0"),
            (self.reg_weight + self.cls_weight > 0, "reg_weight and cls_weight cannot both be 0"),
            (len(self.seeds) > 0, "give at least one seed"),
            (all(0 <= s < 2**64 for s in self.seeds), "seeds must lie in 0 .. 2**64 - 1 (torch's and numpy's range)"),
            (0 <= self.synthetic_seed < 2**64, "synthetic_seed must lie in 0 .. 2**64 - 1"),
            (saved or self.kl_warmup_epochs >= 0, "kl_warmup_epochs must be >= 0 (0: no warm-up)"),
            (saved or self.warmup_epochs >= 0, "warmup_epochs must be >= 0 (0: no warm-up)"),
            (len(set(self.seeds)) == len(self.seeds),
             f"--seeds {' '.join(map(str, self.seeds))} names a seed twice; give each seed once"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"--device {self.device!r}: use auto, cpu, cuda or cuda:N"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (0.0 <= self.train_missing_rate < 1.0, "train_missing_rate must lie in [0, 1)"),
            (all(0.0 <= p < 1.0 for p in self.eval_missing_rates), "eval_missing_rates must lie in [0, 1)"),
            (all(0.0 <= p < 1.0 for p in self.eval_frame_missing_rates),
             "eval_frame_missing_rates must lie in [0, 1)"),
            (len(self.eval_missing_rates) > 0, "give at least one eval missing rate"),
            (len(set(self.eval_missing_rates)) == len(self.eval_missing_rates),
             "eval_missing_rates lists a rate twice; give each rate once"),
            (len(set(self.eval_frame_missing_rates)) == len(self.eval_frame_missing_rates),
             "eval_frame_missing_rates lists a rate twice; give each rate once"),
            (self.compile == "none" or (self.model == "attention_robust_v4" and self.encoder in ("mlp", "lstm")),
             f"--compile {self.compile} works with the default model and --encoder mlp or lstm only (the CfC "
             "cells and the baselines' recurrences would be unrolled step by step into the graph); leave "
             "--compile out"),
            (not self.stack_lstm or (self.model == "attention_robust_v4" and self.encoder == "lstm"),
             "--stack_lstm applies to --encoder lstm of the default model only; leave it out"),
            (self.tta_steps >= 1, "tta_steps must be >= 1"),
            (self.tta_lr > 0, "tta_lr must be > 0"),
            (not self.eval_only or self.checkpoint, "--eval_only needs --checkpoint PATH"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
            (not self.resume or self.output_dir, "--resume needs --output_dir RUN_FOLDER (e.g. runs/latest)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


def _check_fields(cls: type) -> None:
    """Every field of ``cls`` carries a group, known kinds and, with ``needs``, a switch."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    for f in names.values():
        meta = f.metadata
        if meta.get("group") not in GROUPS:
            raise TypeError(f"{cls.__name__}.{f.name}: give _f(..., group=...) one of {', '.join(GROUPS)}")
        if not meta.get("kind", frozenset()) <= set(KINDS):
            raise TypeError(f"{cls.__name__}.{f.name}: unknown kind {sorted(meta['kind'] - set(KINDS))}; "
                            f"known: {', '.join(KINDS)}")
        if "needs" in meta and "switch" not in names.get(meta["needs"], f).metadata["kind"]:
            raise TypeError(f"{cls.__name__}.{f.name}: needs={meta['needs']!r} is not a switch field")


_check_fields(Config)  # a field added without its metadata fails at import, naming itself
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def fields_with(kind: str) -> tuple[str, ...]:
    """The Config fields tagged ``kind`` (one of ``KINDS``), in field order."""
    if kind not in KINDS:
        raise KeyError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return tuple(n for n, f in _FIELDS.items() if kind in f.metadata["kind"])


def fields_in(*groups: str) -> tuple[str, ...]:
    """The Config fields of the given groups (``GROUPS``), in field order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise KeyError(f"unknown group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
    return tuple(n for n, f in _FIELDS.items() if f.metadata["group"] in groups)


# The derived lists (nothing else classifies fields by hand).
SEARCHABLE = fields_with("search")
NOT_SEARCHABLE = frozenset(_FIELDS) - set(SEARCHABLE)
SWITCHES = fields_with("switch")
RESUMABLE_CHANGES = frozenset(fields_with("resumable"))
RUN_FIELDS = fields_with("run")
# switch -> the fields that only matter when it is on (tune.py drops them from a switched-off space)
FEATURE_PARAMS: dict[str, tuple[str, ...]] = {
    s: tuple(n for n, f in _FIELDS.items() if f.metadata.get("needs") == s)
    for s in SWITCHES if any(f.metadata.get("needs") == s for f in _FIELDS.values())}


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``list[int]`` -> (list, int)."""
    origin = typing.get_origin(tp)
    if origin is list:
        return list, typing.get_args(tp)[0]
    if origin is not None:  # Optional / Union
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


_TYPES = {n: _base_type(tp) for n, tp in typing.get_type_hints(Config).items()}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default:" in text else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``PROG: error: MESSAGE (see --help)``, status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str | None = None, description: str | None = None) -> ArgumentParser:
    """The training command line: ``--config FILE`` and one flag per Config field in --help sections."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                            usage="%(prog)s [--config FILE] [--FLAG VALUE ...] (every flag below)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file of {field: value}; flags given beside it win")
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         names: typing.Iterable[str] | None = None) -> None:
    """One flag per Config field (``names``: only these), with its default, choices and help. On a
    parser the flags go into one --help section per group; on an argument group, into that group."""
    hints = typing.get_type_hints(Config)
    wanted = list(_FIELDS) if names is None else list(names)
    used = {_FIELDS[n].metadata["group"] for n in wanted}
    sections = {g: parser.add_argument_group(title) for g, title in GROUPS.items() if g in used} \
        if isinstance(parser, argparse.ArgumentParser) else {}
    for name in wanted:
        f = _FIELDS[name]
        container = sections.get(f.metadata["group"], parser)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        tp = _base_type(hints[f.name])
        if tp is bool:
            pair = container.add_mutually_exclusive_group()
            pair.add_argument(f"--{f.name}", dest=f.name, action="store_true", default=default,
                              help=f"{help_text} (default: {'on' if default else 'off'})")
            pair.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=argparse.SUPPRESS,
                              help=f"turn off --{f.name}")
        elif isinstance(tp, tuple):
            container.add_argument(f"--{f.name}", type=tp[1], nargs="+", default=default, help=help_text)
        else:
            container.add_argument(f"--{f.name}", type=tp, default=default, choices=choices, help=help_text)


def _coerce(name: str, value: Any, source: str) -> Any:
    """A value read from a config file, checked (and converted, like argparse would) for field ``name``."""
    tp = _TYPES[name]
    opt = type(None) in typing.get_args(typing.get_type_hints(Config)[name])

    def bad(what: str) -> ValueError:
        return ValueError(f"{source}: {name}: {what}, got {value!r}")

    if value is None:
        if opt:
            return None
        raise bad("cannot be empty")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if isinstance(tp, tuple):
        items = value if isinstance(value, list) else [value]
        return [_coerce_scalar(name, tp[1], v, bad) for v in items]
    out = _coerce_scalar(name, tp, value, bad)
    choices = _FIELDS[name].metadata.get("choices")
    if choices is not None and out not in choices:
        raise bad(f"expected one of {', '.join(map(str, choices))}")
    return out


def _coerce_scalar(name: str, tp: type, value: Any, bad: typing.Callable[[str], ValueError]) -> Any:
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise bad(f"expected {'a number' if tp in (int, float) else tp.__name__}")
    if tp is str:
        return str(value)
    try:
        out = tp(value)  # "1e-3" (a string to YAML) -> 0.001, as on the command line
    except (TypeError, ValueError):
        raise bad(f"expected {'an integer' if tp is int else 'a number'}") from None
    if tp is int and isinstance(value, float) and out != value:
        raise bad("expected an integer")
    return out


class DuplicateKeyError(ValueError):
    """A mapping in a YAML/JSON file that names one key twice (parsers keep the last silently)."""


def _twice(key: Any, lines: str = "") -> DuplicateKeyError:
    return DuplicateKeyError(f"key {key!r} appears twice{lines}; keep one")


def _unique(pairs: list[tuple[Any, Any]]) -> dict:
    """``dict(pairs)`` (json's ``object_pairs_hook``), refusing a key given twice."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _twice(key)
        out[key] = value
    return out


def _yaml_loader() -> type:
    """yaml's SafeLoader, refusing a mapping that names one key twice."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN202 (yaml's signature)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<" merges keys in on purpose
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not None:
                    raise _twice(key, f" (lines {first} and {line})" if first != line else f" (line {line})")
                seen[key] = line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml_or_json(path: str, what: str) -> Any:
    """The data in a ``.json`` file or a YAML file (any other name); ValueError naming ``what``
    (e.g. "config file") and ``path`` when the file cannot be read or parsed, or when a mapping in it
    names a key twice (which YAML and JSON parsers resolve silently, the last one winning)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        if path.endswith(".json"):
            return json.loads(text, object_pairs_hook=_unique)
        import yaml

        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as err:
        raise ValueError(f"{what} {path}: {err}") from None
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kind = "JSON (its .json name makes it read as JSON)" if path.endswith(".json") else "YAML/JSON"
        raise ValueError(f"{what} {path} is not valid {kind}: {first}") from None


def load_config_file(path: str) -> dict[str, Any]:
    """``{field: value}`` from a YAML or JSON file; ValueError naming the file (and the key) on an
    unreadable file, an unknown key or a value of the wrong type."""
    raw = read_yaml_or_json(path, "config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping {{field: value}}")
    out = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            near = difflib.get_close_matches(str(key), list(_FIELDS), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(f"{path}: unknown key {key!r}{hint}; the keys are the flags' names")
        out[key] = _coerce(key, value, path)
    return out


def config_from_args(argv: list[str] | None = None, prog: str | None = None) -> Config:
    """Parse argv (with ``--config FILE`` values as defaults) into a validated Config; a bad flag,
    file or value exits with one ``error: ...`` line (status 2)."""
    parser = build_parser(prog=prog)
    pre, _ = parser.parse_known_args(argv)
    from_file: dict[str, Any] = {}
    if pre.config is not None:
        try:
            from_file = load_config_file(pre.config)
        except ValueError as err:
            parser.error(str(err))
        parser.set_defaults(**from_file)
    ns = vars(parser.parse_args(argv))
    ns.pop("config")
    cfg = Config(**ns)
    try:
        cfg.validate()
    except ValueError as err:
        named = [k for k in from_file if k in str(err) and ns[k] == from_file[k]]
        parser.error(f"{err} (set in {pre.config})" if named else str(err))
    return cfg


def config_to_argv(cfg: Config, only_changed: bool = True) -> list[str]:
    """The flags that rebuild ``cfg``: those that differ from the defaults (all, with
    ``only_changed=False``), plus every switch (``SWITCHES``), so a saved command keeps its meaning
    when a default is flipped later."""
    base = Config()
    argv: list[str] = []
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if only_changed and value == getattr(base, f.name) and f.name not in SWITCHES:
            continue
        if isinstance(value, bool):
            argv.append(f"--{f.name}" if value else f"--no_{f.name}")
        elif value is None:
            continue
        elif isinstance(value, list):
            argv += [f"--{f.name}", *map(str, value)]
        else:
            argv += [f"--{f.name}", str(value)]
    return argv


# Environment variables of train_v4.sh whose names are not the field's upper-cased name.
ENV_ALIASES = {"CONTRASTIVE_TEMP": "contrastive_temperature"}
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def env_args(environ: typing.Mapping[str, str], prog: str = "train_v4.sh") -> list[str]:
    """The flags that upper-case environment variables set: ``NAME=value`` -> ``--name value``
    (lists split on whitespace), switches ``1/0`` -> ``--name`` / ``--no_name``; an empty variable
    leaves the default. ValueError (``PROG: name must be 1 or 0, got 'x'``) on a bad switch value."""
    names = {n.upper(): n for n in _FIELDS} | ENV_ALIASES
    argv: list[str] = []
    for var in ("CONFIG", "THREADS"):  # the command line's own flags, not Config fields
        if environ.get(var, ""):
            argv += [f"--{var.lower()}", environ[var]]
    for var, name in names.items():
        value = environ.get(var, "")
        if value == "":
            continue
        if _TYPES[name] is bool:
            if value.lower() not in _ON + _OFF:
                raise ValueError(f"{prog}: {name} must be 1 or 0, got {value!r}")
            argv.append(f"--{name}" if value.lower() in _ON else f"--no_{name}")
        elif isinstance(_TYPES[name], tuple):
            argv += [f"--{name}", *value.split()]
        else:
            argv += [f"--{name}", value]
    return argv


def new_run_dir(cfg: Config, root: str = RUNS_ROOT) -> str:
    """Claim a fresh ``ROOT/<model>_<data>_<YYYYmmdd-HHMMSS>`` folder for ``cfg`` (``_2``, ``_3``... when
    that second is taken) and point ``ROOT/latest`` at it; returns its path."""
    data = Path(cfg.data_path.rstrip("/\\")).stem if cfg.data_path else cfg.dataset
    stem = Path(root) / f"{cfg.model}_{data}_{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = stem if i == 1 else stem.with_name(f"{stem.name}_{i}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand runs started in one second
        raise FileExistsError(f"{stem}: no free run folder name")
    latest = Path(root) / "latest"
    if latest.is_symlink() or not latest.exists():  # never replace a real file or folder named latest
        point_latest(root, path.name)
    return str(path)


def point_latest(root: str, target: str) -> None:
    """Make ``ROOT/latest`` a link to ``target`` (a name inside ``root``) in one step: a reader never
    finds it missing."""
    tmp = Path(root) / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, Path(root) / "latest")


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(cfg.to_dict(), fh, indent=2)


def main(argv: list[str] | None = None) -> int:
    """``--env-args``: print the flags the environment sets (shell-quoted, for ``train_v4.sh``);
    otherwise print the flags with their help."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--env-args"]:
        try:
            args = env_args(os.environ)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        if args:  # variables of so generic a name (DEVICE, SEEDS, CONFIG) may be set for something else
            print(f"train_v4.sh: from the environment: {shlex.join(args)}", file=sys.stderr)
        print(shlex.join(args))
        return 0
    build_parser().print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
