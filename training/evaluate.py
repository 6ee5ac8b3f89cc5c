"""Evaluation: encode a split once, then fuse the same states under many presence masks.

Because ``encode`` never reads presence, one encoder pass serves the whole random-missing sweep
and all seven subsets; only frame-level missing (which changes the features) re-encodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from datasets import SUBSETS, Split, SplitTensors, frame_missing, modality_masks, rate_key, subset_masks
from training.metrics import mean_std, positive_probability, sentiment_metrics
from training.tta import Tent

ROBUST_RATES = (0.0, 0.3, 0.5, 0.7)
# The one table of objectives, read by --select_metric and tune.py --objective:
# name -> (metric of training.metrics.METRIC_NAMES, missing rates it is averaged over).
OBJECTIVES: dict[str, tuple[str, tuple[float, ...]]] = {
    "f1_robust": ("f1_non0", ROBUST_RATES), "f1_full": ("f1_non0", (0.0,)),
    "acc2_robust": ("acc2_non0", ROBUST_RATES), "acc2_full": ("acc2_non0", (0.0,)),
    "mae": ("mae", ROBUST_RATES), "ece": ("ece", ROBUST_RATES),
    "corr": ("corr", ROBUST_RATES), "acc7": ("acc7", ROBUST_RATES),
}
LOWER_IS_BETTER = frozenset({"mae", "ece"})  # metrics an objective minimises


@dataclass
class Fused:
    """Outputs of one fuse pass over a split: ``score (N,)``, ``logits (N, C)``, ``weights (N, 3)``."""

    score: np.ndarray
    logits: np.ndarray
    weights: np.ndarray | None = None


EVAL_BATCH = 512  # rows encoded at once in evaluation (at least the training batch size)


def _eval_rows(batch_size: int) -> int:
    return max(batch_size, EVAL_BATCH)


@torch.no_grad()
def encode_split(model: nn.Module, split: Split, batch_size: int, device: torch.device,
                 autocast: bool = False) -> dict[str, torch.Tensor]:
    """Encode every sample of ``split`` once (eval mode); states concatenated on the CPU.

    This holds the states of the whole split (for AttentionRobustV4 about 3x the features: every
    token's key and value); the sweeps use ``fuse_many``, which holds one chunk's.
    """
    model.eval()
    source = SplitTensors(split, device)
    rows = _eval_rows(batch_size)
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, split.n, rows):
        batch = source.gather(torch.arange(i, min(i + rows, split.n)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            states = model.encode(batch)
        for k, v in states.items():
            parts.setdefault(k, []).append((v.float() if v.is_floating_point() else v).cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _fuse_chunk(model: nn.Module, states: dict[str, torch.Tensor], presence: torch.Tensor,
                autocast: bool, device: torch.device, tta: Tent | None = None, source: Split | None = None,
                start: int = 0) -> tuple[torch.Tensor, ...]:
    """(score, logits, fusion weights or None) of one chunk; with ``tta`` the chunk (rows ``start`` on of
    ``source``) is adapted on first."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = (model.fuse(states, presence) if tta is None
               else tta(states, presence, source, range(start, start + len(presence))))
    w = out.get("diagnostics", {}).get("fusion_weights")
    return out["score"].float(), out["logits"].float(), None if w is None else w.float()


def _collect(parts: list[tuple[torch.Tensor, ...]]) -> Fused:
    """One Fused from per-chunk (score, logits, weights) device tensors: one copy to the host each."""
    score, logits = (torch.cat([p[j] for p in parts]).cpu().numpy() for j in (0, 1))
    weights = torch.cat([p[2] for p in parts]).cpu().numpy() if parts and parts[0][2] is not None else None
    return Fused(score, logits, weights)


@torch.no_grad()
def fuse_split(model: nn.Module, states: dict[str, torch.Tensor], presence: np.ndarray,
               device: torch.device, batch_size: int = 512, autocast: bool = False,
               tta: Tent | None = None, source: Split | None = None) -> Fused:
    """Fuse pre-encoded ``states`` under ``presence (N, 3)`` bool; with ``tta``, each batch of
    ``batch_size`` rows is first adapted on (``training/tta.py``; ``source``: the encoded split)."""
    model.eval()
    n = len(presence)
    pres = torch.from_numpy(np.asarray(presence, dtype=bool)).to(device)
    parts = []
    for i in range(0, n, batch_size):
        chunk = {k: v[i:i + batch_size].to(device, non_blocking=True) for k, v in states.items()}
        parts.append(_fuse_chunk(model, chunk, pres[i:i + batch_size], autocast, device, tta, source, i))
    return _collect(parts)


@torch.no_grad()
def fuse_many(model: nn.Module, split: Split, presences: list[np.ndarray], batch_size: int,
              device: torch.device, autocast: bool = False, tta: Tent | None = None) -> list[Fused]:
    """``[fuse of split under presences[j] (N, 3) bool for each j]``, encoding each chunk of rows once.

    Equal to ``encode_split`` + one ``fuse_split`` per mask, but only one chunk's states exist at a
    time (on ``device``: no host round trip per mask), and all masks go to the device in one copy.
    With ``tta`` the chunks are the evaluation batches (``batch_size`` rows), each adapted on.
    """
    model.eval()
    source = SplitTensors(split, device)
    masks = torch.from_numpy(np.stack([np.asarray(p, dtype=bool) for p in presences])).to(device)  # (K, N, 3)
    rows = _eval_rows(batch_size) if tta is None else batch_size
    parts: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in presences]
    for i in range(0, split.n, rows):
        batch = source.gather(torch.arange(i, min(i + rows, split.n)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            states = model.encode(batch)
        for j in range(len(presences)):
            parts[j].append(_fuse_chunk(model, states, masks[j, i:i + rows], autocast, device, tta, split, i))
    return [_collect(p) for p in parts]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predictions(fused: Fused, task: str, num_classes: int, presence: np.ndarray | None = None,
                calibration=None) -> tuple[np.ndarray, np.ndarray]:
    """Reported ``(preds (N,), probs (N, C))``: the score head, or the class head's expected value.

    ``calibration`` (a ``training.calibration.Calibration``) is applied per presence row first.
    """
    score, logits = fused.score, fused.logits
    if calibration is not None:
        score, logits = calibration.apply(score, logits, presence)
    probs = softmax(logits)
    if task == "regression":
        return score, probs
    centres = {2: np.array([-1.0, 1.0]), 3: np.array([-1.0, 0.0, 1.0]), 7: np.arange(-3.0, 4.0)}[num_classes]
    return probs @ centres, probs


def positive_scores(fused: Fused, presence: np.ndarray, calibration=None) -> np.ndarray:
    """The reported P(positive) ``(N,)`` (float64): ``calibration``'s source (``Calibration.source``:
    Platt map of the score, tempered class head or their blend), or the raw class head without one."""
    if calibration is None:
        return positive_probability(softmax(fused.logits))
    return calibration.positive_probability(fused.score, fused.logits, presence)


def prediction_note(task: str, calibration=None) -> str:
    """One line naming the predictions a report uses (decisions/errors and P(positive))."""
    decision = "score head" if task == "regression" else "class head's expected value"
    if calibration is None:
        prob = "softmax of the class head (uncalibrated)"
    else:
        tempered = "with per-pattern temperature" if (calibration.temperatures != 1).any() else "(no temperature)"
        prob = {"score": "Platt map of the score per presence pattern",
                "class": f"class head {tempered}",
                "blend": f"blend {calibration.blend:.2f} x Platt(score) + {1 - calibration.blend:.2f} x tempered "
                         f"class head"}[calibration.source]
    cal = "" if calibration is None else " (calibrated on valid)"
    return f"Acc/F1/MAE/Corr: {decision}{cal}; Brier/NLL/ECE: P(positive) = {prob}"


def validation_score(model: nn.Module, split: Split, metric: str, batch_size: int,
                     device: torch.device, task: str, num_classes: int) -> tuple[float, dict]:
    """The objective ``metric`` (a name of ``OBJECTIVES``) on valid, higher is better (MAE and ECE
    negated), and the metrics per rate."""
    if metric not in OBJECTIVES:
        raise ValueError(f"unknown selection metric {metric!r}; use one of {', '.join(OBJECTIVES)}")
    name, rates = OBJECTIVES[metric]
    per_rate = {}
    sweep = fuse_many(model, split, [modality_masks(split.n, p) for p in rates], batch_size, device)
    for p, fused in zip(rates, sweep):
        preds, probs = predictions(fused, task, num_classes)
        per_rate[p] = sentiment_metrics(preds, split.labels, probs)
    value = float(np.mean([m[name] for m in per_rate.values()]))
    return (-value if name in LOWER_IS_BETTER else value), per_rate


def presence_patterns(presence: np.ndarray) -> np.ndarray:
    """Pattern index 0..6 of each row of ``presence (N, 3)`` (bit T=1, A=2, V=4, minus one)."""
    p = np.asarray(presence, dtype=np.int64)
    return p[:, 0] + 2 * p[:, 1] + 4 * p[:, 2] - 1


def evaluate_split(model: nn.Module, split: Split, rates: list[float], frame_rates: list[float],
                   batch_size: int, device: torch.device, task: str, num_classes: int,
                   calibration=None, autocast: bool = False, tta: Tent | None = None) -> dict:
    """The full sweep of one trained model on ``split`` (test, or valid while tuning).

    Returns ``{"missing_rate": {p: metrics}, "frame_missing_rate": {r: metrics}, "subsets": {name:
    metrics}, "arrays": {...}}`` where arrays hold what ``predictions.npz`` stores for this seed.
    ``calibration`` is the validation-fitted ``Calibration`` (none: raw outputs); ``tta`` adapts
    on every batch of every pass (``training/tta.py``).
    """
    out: dict = {"missing_rate": {}, "frame_missing_rate": {}, "subsets": {}}
    preds_r, probs_r, p_pos_r, masks_r, weights_r = [], [], [], [], []
    full = np.ones((split.n, 3), dtype=bool)
    # one encoder pass for every rate, every subset and frame rate 0 (fuse_many holds one chunk's states)
    presences = ([modality_masks(split.n, p) for p in rates] + [subset_masks(split.n, name) for name in SUBSETS]
                 + [full] * sum(r == 0 for r in frame_rates))
    fused_all = iter(fuse_many(model, split, presences, batch_size, device, autocast, tta))

    def run(presence: np.ndarray, frames: Split | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, Fused]:
        fused = next(fused_all) if frames is None else fuse_many(model, frames, [presence], batch_size, device,
                                                                  autocast, tta)[0]
        preds, probs = predictions(fused, task, num_classes, presence, calibration)
        p_pos = positive_scores(fused, presence, calibration)
        return preds, probs, p_pos, sentiment_metrics(preds, split.labels, p_pos=p_pos), fused

    for p, masks in zip(rates, presences):
        preds, probs, p_pos, m, fused = run(masks)
        out["missing_rate"][rate_key(p)] = m
        preds_r.append(preds)
        probs_r.append(probs)
        p_pos_r.append(p_pos)
        masks_r.append(masks)
        if fused.weights is not None:
            weights_r.append(fused.weights)
    subset_preds, subset_p_pos = [], []
    for name in SUBSETS:
        preds, _, p_pos, m, _ = run(subset_masks(split.n, name))
        out["subsets"][name] = m
        subset_preds.append(preds)
        subset_p_pos.append(p_pos)
    for r in frame_rates:
        out["frame_missing_rate"][rate_key(r)] = run(full, None if r == 0 else frame_missing(split, r))[3]
    out["arrays"] = {
        "preds": np.stack(preds_r).astype(np.float32),
        "probs": np.stack(probs_r).astype(np.float32),
        "p_pos": np.stack(p_pos_r),
        "masks": np.stack(masks_r),
        "subset_preds": np.stack(subset_preds).astype(np.float32),
        "subset_p_pos": np.stack(subset_p_pos),
    }
    if weights_r:
        out["arrays"]["fusion_weights"] = np.stack(weights_r).astype(np.float32)
    return out


def ensemble(per_seed: list[dict], labels: np.ndarray) -> dict:
    """The deep ensemble of the seeds: one prediction whose score and P(positive) are the means of the
    seeds' (calibrated) ones, scored per missing rate and subset, plus ``mean_over_rates``."""
    out: dict = {"missing_rate": {}, "subsets": {}}
    for section, preds, p_pos in (("missing_rate", "preds", "p_pos"), ("subsets", "subset_preds", "subset_p_pos")):
        for i, key in enumerate(per_seed[0][section]):
            out[section][key] = sentiment_metrics(
                np.mean([r["arrays"][preds][i] for r in per_seed], axis=0), labels,
                p_pos=np.mean([r["arrays"][p_pos][i] for r in per_seed], axis=0))
    out["mean_over_rates"] = {"missing_rate": mean_std(list(out["missing_rate"].values()))[0]}
    return out


def aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and std over seeds for every section; ``mean_over_rates`` averages the sweep rates."""
    results: dict = {}
    std: dict = {}
    for section in ("missing_rate", "frame_missing_rate", "subsets"):
        results[section], std[section] = {}, {}
        for key in per_seed[0][section]:
            results[section][key], std[section][key] = mean_std([r[section][key] for r in per_seed])
    results["mean_over_rates"] = {}
    std["mean_over_rates"] = {}
    for section in ("missing_rate", "frame_missing_rate"):
        if not per_seed[0][section]:
            continue
        seed_means = [mean_std(list(r[section].values()))[0] for r in per_seed]
        results["mean_over_rates"][section], std["mean_over_rates"][section] = mean_std(seed_means)
    return results, std
