"""The one configuration dataclass: argparse fills it, Optuna trials fill it, checkpoints store it.

Every field is a command-line flag of the same name (``--hidden_dim 128``). Boolean fields take
both ``--name`` and ``--no_name`` (the field ``tensorboard`` gives ``--no_tensorboard``). The
help text of each flag is the ``help`` metadata of its field, so there is no second list.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from training.evaluate import OBJECTIVES

DEFAULT_RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def _f(default: Any, help: str, choices: list | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class Config:
    # ---- data -------------------------------------------------------------------------------
    dataset: str = _f("synthetic", "named data set; 'synthetic' generates the embedded MOSI-shaped set",
                      ["synthetic", "mosi", "mosei"])
    data_path: str | None = _f(None, "an MMSA or MulT pickle, or a folder of .csd files")
    data_format: str = _f("auto", "format of --data_path; 'auto' detects it", ["auto", "mmsa", "mult", "csd"])
    synthetic_seed: int = _f(0, "seed of the generated embedded data set")
    nan_policy: str = _f("error", "NaN/+inf in input features: 'error' refuses the file, 'zero' replaces "
                         "them with 0 (-inf, the MOSEI audio artefact, is always replaced)", ["error", "zero"])
    standardize: bool = _f(True, "per-feature standardization fitted on the train split only")
    # ---- model ------------------------------------------------------------------------------
    model: str = _f("attention_robust_v4", "model name (attention_robust_v4 or a baseline)")
    encoder: str = _f("mlp", "variational encoder kind", ["mlp", "lstm"])
    hidden_dim: int = _f(128, "width of every modality state")
    dropout: float = _f(0.3, "dropout inside encoders and heads")
    bidirectional: bool = _f(True, "bidirectional LSTM encoder")
    num_heads: int = _f(4, "attention heads of the proxy attention and the AECF pool")
    variational: bool = _f(True, "sample z ~ N(mu, std) in training (off: z = mu)")
    use_gated_fusion: bool = _f(True, "gated uncertainty fusion (off: plain inverse-variance weights)")
    gate_alpha: float = _f(0.5, "w = alpha * w_uncertainty + (1 - alpha) * w_gate")
    fusion_temperature: float = _f(1.0, "temperature of the inverse-std softmax")
    use_proxy_attention: bool = _f(True, "fused proxy queries the modality tokens")
    use_aecf: bool = _f(False, "AECF entropy-driven curriculum masking of attention weights (off by default: "
                        "it did not raise validation robustness on real MOSI, see README)")
    aecf_mask_prob: float = _f(0.15, "AECF base masking probability")
    aecf_entropy_target: float = _f(0.7, "AECF target normalised attention entropy")
    aecf_min_active: int = _f(1, "AECF never masks below this many present modalities")
    entropy_weight: float = _f(0.01, "weight of the AECF entropy loss")
    # ---- task and losses --------------------------------------------------------------------
    task: str = _f("regression", "what the reported predictions come from: the score head or "
                   "the class head's expected value", ["regression", "classification"])
    num_classes: int = _f(2, "classes of the classification head", [2, 3, 7])
    reg_loss: str = _f("l1", "regression loss on the score", ["l1", "mse"])
    reg_weight: float = _f(1.0, "weight of the regression loss")
    cls_weight: float = _f(0.5, "weight of the focal label-smoothing classification loss")
    focal_gamma: float = _f(2.0, "focal loss gamma (0: plain cross-entropy)")
    label_smoothing: float = _f(0.1, "label smoothing of the classification loss")
    use_vae: bool = _f(True, "VAE loss: reconstruction of present modalities + KL")
    vae_weight: float = _f(0.1, "weight of the reconstruction term")
    kl_weight: float = _f(1e-3, "weight of the KL term (after warm-up)")
    kl_warmup_epochs: int = _f(5, "epochs of linear KL warm-up")
    use_contrastive: bool = _f(True, "cross-modal InfoNCE between present modality pairs")
    contrastive_weight: float = _f(0.1, "weight of the InfoNCE loss")
    contrastive_temperature: float = _f(0.1, "InfoNCE temperature")
    unimodal_weight: float = _f(0.0, "weight of the unimodal supervision: a linear probe per modality predicts "
                                "the label from that modality's mean alone (0 disables)")
    # ---- training ---------------------------------------------------------------------------
    seeds: list[int] = _f([1111, 1112, 1113], "one training run per seed; results are mean and std")
    epochs: int = _f(30, "maximum training epochs")
    batch_size: int = _f(32, "batch size")
    lr: float = _f(1e-3, "AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    grad_clip: float = _f(1.0, "gradient norm clip (0 disables)")
    scheduler: str = _f("cosine", "learning-rate schedule", ["cosine", "plateau", "none"])
    warmup_epochs: int = _f(1, "linear learning-rate warm-up epochs (cosine schedule)")
    patience: int = _f(8, "early stopping patience in epochs (0 disables)")
    select_metric: str = _f("f1_robust", "validation metric for best-epoch selection and early stopping: "
                            "f1_robust = mean F1 non-0 over missing rates 0, .3, .5, .7",
                            list(OBJECTIVES))
    train_missing_rate: float = _f(0.7, "train-time modality dropout rate (0 disables)")
    train_missing_schedule: str = _f("uniform", "'uniform': each batch draws p ~ U(0, rate); "
                                     "'fixed': every batch uses the rate", ["uniform", "fixed"])
    distill_weight: float = _f(0.0, "self-distillation: pull each prediction made with train-time dropped "
                               "modalities toward the same model's prediction with all of the sample's "
                               "modalities (eval mode, no gradient); weight of that KL + L1 term")
    device: str = _f("auto", "compute device", ["auto", "cpu", "cuda"])
    amp: bool = _f(False, "automatic mixed precision (CUDA only)")
    # ---- evaluation -------------------------------------------------------------------------
    eval_missing_rates: list[float] = _f(DEFAULT_RATES, "random modality-missing rates of the test sweep")
    eval_frame_missing_rates: list[float] = _f(DEFAULT_RATES, "frame-level missing rates of the test sweep")
    calibrate: bool = _f(True, "per-presence-pattern temperature scaling of the class head, fitted on valid")
    calibrate_score: bool = _f(True, "per-presence-pattern affine correction (a >= 0) of the score, fitted on "
                               "valid: shrinks patterns that carry no signal on new videos toward the prior")
    # ---- run --------------------------------------------------------------------------------
    output_dir: str = _f("runs/attention_robust_v4", "where every artefact goes")
    eval_only: bool = _f(False, "evaluate --checkpoint without training")
    checkpoint: str | None = _f(None, "checkpoint to evaluate with --eval_only")
    resume: bool = _f(False, "continue an interrupted run in --output_dir from its last checkpoint")
    overwrite: bool = _f(False, "replace a finished or interrupted run already in --output_dir")
    quiet: bool = _f(False, "no progress bars; the final table only")
    tensorboard: bool = _f(True, "TensorBoard logs in OUTPUT_DIR/tb")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of its range."""
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
            (not self.eval_only or self.checkpoint, "--eval_only needs --checkpoint PATH"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``list[int]`` -> (list, int)."""
    origin = typing.get_origin(tp)
    if origin is list:
        return list, typing.get_args(tp)[0]
    if origin is not None:  # Optional / Union
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def build_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per Config field, defaults and help included."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        tp = _base_type(hints[f.name])
        if tp is bool:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(f"--{f.name}", dest=f.name, action="store_true", default=default,
                               help=f"{help_text} (default: {'on' if default else 'off'})")
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                               help=f"turn off --{f.name}")
        elif isinstance(tp, tuple):
            parser.add_argument(f"--{f.name}", type=tp[1], nargs="+", default=default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=tp, default=default, choices=choices, help=help_text)


def config_from_args(argv: list[str] | None = None, prog: str | None = None) -> Config:
    """Parse argv into a validated Config; bad values exit with a clear message (status 2)."""
    parser = build_parser(prog=prog)
    ns = parser.parse_args(argv)
    cfg = Config(**vars(ns))
    try:
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    return cfg


def config_to_argv(cfg: Config, only_changed: bool = True) -> list[str]:
    """The flags that rebuild ``cfg``: those that differ from the defaults (all, with
    ``only_changed=False``), plus every model/loss switch (and the weights whose 0 is a switch), so a
    saved command keeps its meaning when a default is flipped later."""
    base = Config()
    argv: list[str] = []
    run_flags = {"eval_only", "resume", "overwrite", "quiet", "tensorboard", "standardize", "amp"}
    switch_weights = {"unimodal_weight", "distill_weight"}  # 0 switches the component off
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        always = (isinstance(value, bool) and f.name not in run_flags) or f.name in switch_weights
        if only_changed and value == getattr(base, f.name) and not always:
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


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(cfg.to_dict(), fh, indent=2)


if __name__ == "__main__":  # pragma: no cover - prints the flags
    build_parser().print_help(sys.stdout)
