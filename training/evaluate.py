"""Evaluation: encode a split once, then fuse the same states under many presence masks.

Because ``encode`` never reads presence, one encoder pass serves the whole random-missing sweep
and all seven subsets; only frame-level missing (which changes the features) re-encodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from datasets import (
    SUBSETS,
    Split,
    SplitTensors,
    frame_keep,
    modality_masks,
    rate_key,
    subset_masks,
    trim_to_longest,
)
from datasets.batching import to_device
from datasets.classes import class_centres, positive_probability
from modules.presence import no_modality_error, presence_checked
from training.metrics import mean_std, sentiment_metrics, sentiment_metrics_many
from training.objectives import LOWER_IS_BETTER, OBJECTIVES

if TYPE_CHECKING:
    from training.calibration import Calibration
    from training.config import Config
    from training.tta import Tent


@dataclass
class Fused:
    """Outputs of one fuse pass over a split: ``score (N,)``, ``logits (N, C)``, ``weights (N, 3)``."""

    score: np.ndarray
    logits: np.ndarray
    weights: np.ndarray | None = None


EVAL_BATCH = 512  # rows encoded at once in evaluation (at least the training batch size)
GROUP_ROWS = 256  # rows of one grouped pattern pass (each fused under up to 7 patterns at once)


def _eval_rows(batch_size: int) -> int:
    return max(batch_size, EVAL_BATCH)


def _collect(parts: list[tuple[torch.Tensor, ...]], back: np.ndarray | None = None) -> Fused:
    """One Fused from per-chunk (score, logits, weights) device tensors: one copy to the host each.
    ``back``: where each of the split's rows sits among the collected rows (the chunks ran in another
    order); rows come back in the split's order."""
    out = [None if not parts or parts[0][j] is None else torch.cat([p[j] for p in parts]).cpu().numpy()
           for j in range(3)]
    return Fused(*(a if a is None or back is None else a[back] for a in out))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


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


# the presence row of each pattern index (presence_patterns): T, A, TA, V, TV, AV, TAV
PATTERN_PRESENCE = np.array([[(c + 1) >> b & 1 for b in range(3)] for c in range(7)], dtype=bool)


def presence_patterns(presence: np.ndarray) -> np.ndarray:
    """Pattern index 0..6 of each row of ``presence (N, 3)`` (bit T=1, A=2, V=4, minus one)."""
    p = np.asarray(presence, dtype=np.int64)
    return p[:, 0] + 2 * p[:, 1] + 4 * p[:, 2] - 1


def check_masks(masks: np.ndarray) -> None:
    """Raise ValueError if ``masks (K, N, 3)`` bool is not of that shape or a row of a mask has no
    modality (named by its row in the split). numpy on the host: no device read, and it holds
    inside ``presence_checked`` too, where the models' own checks look at shapes only."""
    if masks.ndim != 3 or masks.shape[-1] != 3:
        raise ValueError(f"presence must have shape (N, 3), got {masks.shape[1:]}")
    empty = ~masks.any(axis=-1)  # (K, N)
    if empty.any():
        raise no_modality_error(np.flatnonzero(empty.any(axis=0)).tolist())


@dataclass
class Evaluator:
    """Everything one evaluation needs: the model, where and how it runs, and how outputs are read.

    ``calibration``: the validation-fitted ``Calibration`` applied to ``sweep`` (none: raw outputs);
    ``autocast``: bfloat16 autocast of ``encode``/``fuse``/``sweep``; ``tta``: test-time adaptation
    on every batch of every ``fuse``/``sweep`` pass (``training/tta.py``). ``validation_score`` (best
    epoch, tuning) and calibration fitting use none of the three. ``group_patterns`` (the default of
    ``from_config``): fuse ``GROUP_ROWS`` rows of a chunk under all their presence patterns in one
    call where the model can (``fuses_groups``), instead of one pass per pattern that skips the
    modalities the pattern lacks; on a GPU the passes are bound by kernel launches, and on the CPU
    the grouped calls measured as fast or faster (``bench/README.md``).
    """

    model: nn.Module
    device: torch.device
    batch_size: int
    task: str
    num_classes: int
    calibration: Calibration | None = None
    autocast: bool = False
    tta: Tent | None = None
    group_patterns: bool = False

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Config, device: torch.device, calibration: Calibration | None = None,
                    tta: Tent | None = None) -> Evaluator:
        """The evaluator of a run of ``cfg`` (batch size, task, classes; autocast with ``amp`` on CUDA)."""
        return cls(model, device, cfg.batch_size, cfg.task, cfg.num_classes, calibration,
                   bool(cfg.amp and device.type == "cuda"), tta, True)

    @torch.no_grad()
    def encode(self, split: Split) -> dict[str, torch.Tensor]:
        """Encode every sample of ``split`` once (eval mode); states concatenated on the CPU.

        This holds the states of the whole split (for AttentionRobustV4 about 3x the features: every
        token's key and value); the sweeps use ``fuse_many``, which holds one chunk's.
        """
        self.model.eval()
        source = SplitTensors(split, self.device)
        rows = _eval_rows(self.batch_size)
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, split.n, rows):
            batch = source.gather(torch.arange(i, min(i + rows, split.n)))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                states = self.model.encode(batch)
            for k, v in states.items():
                parts.setdefault(k, []).append((v.float() if v.is_floating_point() else v).cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def _rows(self, tta: Tent | None) -> int:
        """Rows fused at once: the evaluation chunk, or with ``tta`` the batches it adapts on."""
        return _eval_rows(self.batch_size) if tta is None else self.batch_size

    def _fuse_chunk(self, states: dict[str, torch.Tensor], presence: torch.Tensor, autocast: bool,
                    tta: Tent | None = None, source: Split | SplitTensors | None = None,
                    start: int = 0) -> tuple[torch.Tensor, ...]:
        """(score, logits, fusion weights or None) of one chunk; with ``tta`` the chunk (rows ``start`` on of
        ``source``) is adapted on first."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = (self.model.fuse(states, presence) if tta is None
                   else tta(states, presence, source, range(start, start + len(presence))))
        w = out.get("diagnostics", {}).get("fusion_weights")
        return out["score"].float(), out["logits"].float(), None if w is None else w.float()

    @torch.no_grad()
    def fuse(self, states: dict[str, torch.Tensor], presence: np.ndarray, source: Split | None = None) -> Fused:
        """Fuse pre-encoded ``states`` (``encode``) under ``presence (N, 3)`` bool; with ``tta``, each
        batch of ``batch_size`` rows is first adapted on (``source``: the encoded split)."""
        self.model.eval()
        n, rows = len(presence), self._rows(self.tta)
        presence = np.asarray(presence, dtype=bool)
        check_masks(presence[None])  # once, on the host: the chunks' passes then wait on no check
        pres = to_device(torch.from_numpy(presence), self.device)
        parts = []
        with presence_checked():
            for i in range(0, n, rows):
                chunk = {k: to_device(v[i:i + rows], self.device) for k, v in states.items()}
                parts.append(self._fuse_chunk(chunk, pres[i:i + rows], self.autocast, self.tta, source, i))
        return _collect(parts)

    @torch.no_grad()
    def fuse_many(self, split: Split, presences: list[np.ndarray], raw: bool = False,
                  keep: dict[str, np.ndarray] | None = None) -> list[Fused]:
        """``[fuse of split under presences[j] (N, 3) bool for each j]``, encoding each chunk of rows once.

        Equal to ``encode`` + one ``fuse`` per mask (up to rounding), but only one chunk's states
        exist at a time (on the device: no host round trip per mask), and all masks go to the device
        in one copy. The chunks take the rows longest first, each cut to its longest row
        (``trim_to_longest``), so short rows are not encoded at the length of the longest one; rows
        are fused independently in eval mode, and come back in the split's order. With ``tta`` the
        chunks are the evaluation batches (``batch_size`` rows) in the split's order, each adapted
        on. ``raw``: without autocast and test-time adaptation. ``keep``: frame-level erasure
        (``datasets.frame_keep``), applied batch by batch.
        """
        autocast, tta = (False, None) if raw else (self.autocast, self.tta)
        self.model.eval()
        source = SplitTensors(split, self.device, keep=keep)
        masks = np.stack([np.asarray(p, dtype=bool) for p in presences])  # (K, N, 3)
        check_masks(masks)  # once, on the host: the passes then wait on no check
        masks = to_device(torch.from_numpy(masks), self.device)
        codes = np.stack([presence_patterns(p) for p in presences])  # (K, N) pattern of each row under each mask
        lengths = np.asarray(split.lengths)
        order = np.arange(split.n) if tta is not None else np.argsort(-lengths.max(1), kind="stable")
        rows = self._rows(tta)
        order_on = to_device(torch.from_numpy(order), self.device)  # the rows of each chunk, where they are used
        parts: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in presences]
        with presence_checked():
            for i in range(0, split.n, rows):
                idx = order[i:i + rows]
                at = order_on[i:i + rows]
                batch = trim_to_longest(source.gather(at if source.resident else torch.from_numpy(idx)), lengths[idx])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    states = self.model.encode(batch)
                chunk_codes = codes[:, idx]
                patterns = np.unique(chunk_codes)
                if tta is None and len(patterns) < len(presences):
                    for j, out in enumerate(self._fuse_by_pattern(states, chunk_codes, patterns, autocast)):
                        parts[j].append(out)
                    continue
                for j in range(len(presences)):
                    parts[j].append(self._fuse_chunk(states, masks[j, at], autocast, tta, source, i))
        back = np.argsort(order)  # the inverse permutation, made once for every mask
        return [_collect(p, back) for p in parts]

    def _host_presence(self, presence: np.ndarray) -> torch.Tensor:
        """A pattern pass's presence as a host tensor (the model reads on the host which modalities no
        row has), pinned on CUDA so that its copy to the card waits for nothing."""
        presence = torch.from_numpy(presence)
        return presence.pin_memory() if self.device.type == "cuda" else presence

    def _fuse_by_pattern(self, states: dict[str, torch.Tensor], codes: np.ndarray, patterns: np.ndarray,
                         autocast: bool) -> list[tuple[torch.Tensor, ...]]:
        """The chunk fused under each of K masks given as pattern ``codes (K, n)``, with one pass per
        distinct pattern (``patterns``, at most 7) instead of one per mask: every row is fused under
        each pattern, and each mask takes its rows from the pass of their pattern. In eval mode rows
        are fused independently of each other, so this equals one pass per mask (up to rounding: the
        pattern is passed on the host, so a model may skip the work of the modalities it lacks)."""
        n = codes.shape[1]
        if self.group_patterns and getattr(self.model, "fuses_groups", False):
            # one call per GROUP_ROWS rows, each under every pattern (P * rows rows, pattern-major)
            parts = []
            for i in range(0, n, GROUP_ROWS):
                rows = min(GROUP_ROWS, n - i)
                presence = self._host_presence(np.repeat(PATTERN_PRESENCE[patterns], rows, axis=0))
                out = self._fuse_chunk({k: v[i:i + rows] for k, v in states.items()}, presence, autocast)
                parts.append([None if t is None else t.view(len(patterns), rows, *t.shape[1:]) for t in out])
            tables = [None if parts[0][t] is None else torch.cat([p[t] for p in parts], dim=1) for t in range(3)]
        else:
            passes = [self._fuse_chunk(states, self._host_presence(np.tile(PATTERN_PRESENCE[c], (n, 1))), autocast)
                      for c in patterns]
            tables = [None if passes[0][t] is None else torch.stack([p[t] for p in passes]) for t in range(3)]
        where = to_device(torch.from_numpy(np.searchsorted(patterns, codes)), self.device)  # (K, n): pass of each row
        rows = torch.arange(n, device=self.device)
        return [tuple(None if tab is None else tab[where[j], rows] for tab in tables) for j in range(len(codes))]

    def predictions(self, fused: Fused, presence: np.ndarray | None = None,
                    calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Reported ``(preds (N,), probs (N, C))``: the score head, or the class head's expected value.

        With ``calibrated`` the calibration is applied per row of ``presence (N, 3)`` first.
        """
        score, logits = fused.score, fused.logits
        if calibrated and self.calibration is not None:
            score, logits = self.calibration.apply(score, logits, presence)
        probs = softmax(logits)
        if self.task == "regression":
            return score, probs
        return probs @ class_centres(self.num_classes), probs

    def positive_scores(self, fused: Fused, presence: np.ndarray) -> np.ndarray:
        """The reported P(positive) ``(N,)`` (float64): the calibration's source (``Calibration.source``:
        Platt map of the score, tempered class head or their blend), or the raw class head without one."""
        if self.calibration is None:
            return positive_probability(softmax(fused.logits))
        return self.calibration.positive_probability(fused.score, fused.logits, presence)

    def validation_score(self, split: Split, metric: str) -> tuple[float, dict]:
        """The objective ``metric`` (a name of ``OBJECTIVES``) on ``split`` (valid), higher is better (those of
        ``LOWER_IS_BETTER`` negated), and the metrics per rate; raw outputs (no calibration, autocast or tta)."""
        if metric not in OBJECTIVES:
            raise ValueError(f"unknown selection metric {metric!r}; use one of {', '.join(OBJECTIVES)}")
        name, rates = OBJECTIVES[metric]
        sweep = self.fuse_many(split, [modality_masks(split.n, p) for p in rates], raw=True)
        preds, probs = zip(*(self.predictions(fused, calibrated=False) for fused in sweep))
        per_rate = dict(zip(rates, sentiment_metrics_many(
            np.stack(preds), split.labels, np.stack([positive_probability(q) for q in probs]))))
        value = float(np.mean([m[name] for m in per_rate.values()]))
        return (-value if name in LOWER_IS_BETTER else value), per_rate

    def sweep(self, split: Split, rates: list[float], frame_rates: list[float]) -> dict:
        """The full sweep of the model on ``split`` (test, or valid while tuning).

        Returns ``{"missing_rate": {p: metrics}, "frame_missing_rate": {r: metrics}, "subsets": {name:
        metrics}, "arrays": {...}}`` where arrays hold what ``predictions.npz`` stores for this seed.
        """
        out: dict = {"missing_rate": {}, "frame_missing_rate": {}, "subsets": {}}
        full = np.ones((split.n, 3), dtype=bool)
        # one encoder pass for every rate, every subset and frame rate 0 (fuse_many holds one chunk's states)
        presences = ([modality_masks(split.n, p) for p in rates] + [subset_masks(split.n, name) for name in SUBSETS]
                     + [full] * sum(r == 0 for r in frame_rates))
        fused = self.fuse_many(split, presences)
        preds, probs = zip(*(self.predictions(f, m) for f, m in zip(fused, presences)))
        p_pos = np.stack([self.positive_scores(f, m) for f, m in zip(fused, presences)])
        # every distinct mask's metrics in one call; a mask met again (rate 0 = subset TAV = frame rate 0)
        # gets a copy of its first one's, so the twin band is not drawn twice for the same predictions
        first = {}
        for i, m in enumerate(presences):
            first.setdefault(m.tobytes(), i)
        distinct = sorted(first.values())
        scored = dict(zip(distinct, sentiment_metrics_many(np.stack(preds)[distinct], split.labels, p_pos[distinct])))
        metrics = iter(dict(scored[first[m.tobytes()]]) for m in presences)
        for p in rates:
            out["missing_rate"][rate_key(p)] = next(metrics)
        for name in SUBSETS:
            out["subsets"][name] = next(metrics)
        for r in frame_rates:  # a frame rate above 0 changes the features: encoded again
            if r == 0:
                out["frame_missing_rate"][rate_key(r)] = next(metrics)
                continue
            f = self.fuse_many(split, [full], keep=frame_keep(split, r))[0]
            out["frame_missing_rate"][rate_key(r)] = sentiment_metrics(
                self.predictions(f, full)[0], split.labels, p_pos=self.positive_scores(f, full))
        k, sub = len(rates), slice(len(rates), len(rates) + len(SUBSETS))
        out["arrays"] = {
            "preds": np.stack(preds[:k]).astype(np.float32),
            "probs": np.stack(probs[:k]).astype(np.float32),
            "p_pos": p_pos[:k],
            "masks": np.stack(presences[:k]),
            "subset_preds": np.stack(preds[sub]).astype(np.float32),
            "subset_p_pos": p_pos[sub],
        }
        if fused[0].weights is not None:
            out["arrays"]["fusion_weights"] = np.stack([f.weights for f in fused[:k]]).astype(np.float32)
        return out


def ensemble(per_seed: list[dict], labels: np.ndarray) -> dict:
    """The deep ensemble of the seeds: one prediction whose score and P(positive) are the means of the
    seeds' (calibrated) ones, scored per missing rate and subset, plus ``mean_over_rates``."""
    out: dict = {"missing_rate": {}, "subsets": {}}
    for section, preds, p_pos in (("missing_rate", "preds", "p_pos"), ("subsets", "subset_preds", "subset_p_pos")):
        mean = [np.mean([r["arrays"][a] for r in per_seed], axis=0) for a in (preds, p_pos)]  # (K, N) each
        out[section] = dict(zip(per_seed[0][section], sentiment_metrics_many(mean[0], labels, mean[1])))
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
