"""Which P(positive) to report: every option, chosen by validation, then read on test.

    python -m bench.probability RUN_DIR [--folds 4]

For each seed's ``RUN_DIR/seed_*/best.pt`` (data and standardization from the checkpoint):

* validation, cross-validated by video: the validation videos are split into ``--folds`` groups;
  the per-pattern temperatures, Platt maps and the blend weight are fitted on the other groups
  and score the held-out one, so options with more fitted parameters gain nothing from
  re-predicting their own fitting data. This is what chooses the default (test is never read).
* test: each source fitted on the whole validation split (as ``fit_calibration`` does).

Brier and NLL of P(positive) on the non-0 samples at each random missing rate (the test-time
masks of ``modality_masks``), mean over seeds, and the deep ensemble of the seeds: on valid the
mean of the seeds' held-out predictions (the folds are the same for every seed), and on test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from datasets import SUBSETS, modality_masks, subset_masks
from datasets.classes import labels_to_classes
from training.calibration import PROBABILITY_SOURCES, Calibration, fit_probabilities, fit_temperature
from training.cli import run_reporting_errors
from training.errors import ConfigError
from training.evaluate import Evaluator, presence_patterns
from training.metrics import probability_scores
from training.run import load_and_standardize
from training.trainer import load_for_eval

RATES = (0.0, 0.3, 0.5, 0.7)


def pattern_outputs(model, split, cfg, device) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Patterns (7,), raw scores (7, N) and logits (7, N, C) of ``split`` fused under each subset."""
    evaluator = Evaluator.from_config(model, cfg, device)
    states = evaluator.encode(split)
    ks, scores, logits = [], [], []
    for name in SUBSETS:
        masks = subset_masks(split.n, name)
        fused = evaluator.fuse(states, masks)
        ks.append(int(presence_patterns(masks[:1])[0]))
        scores.append(fused.score)
        logits.append(fused.logits)
    return ks, np.stack(scores), np.stack(logits)


def at_rate(cal: Calibration, ks: list[int], scores: np.ndarray, logits: np.ndarray, p: float, n: int,
            rows: np.ndarray, source: str) -> np.ndarray:
    """P(positive) of ``rows`` under the test-time masks of rate ``p`` (fusion is per sample)."""
    masks = modality_masks(n, p)[rows]
    idx = np.array([ks.index(k) for k in presence_patterns(masks)])
    return cal.positive_probability(scores[idx, rows], logits[idx, rows], masks, source)


def fit(ks, scores, logits, labels, num_classes, rows) -> Calibration:
    cal = Calibration()
    targets = labels_to_classes(torch.from_numpy(labels[rows]), num_classes).numpy()
    for i, k in enumerate(ks):
        cal.temperatures[k] = fit_temperature(logits[i, rows], targets)
    return fit_probabilities(cal, scores[:, rows], logits[:, rows], labels[rows], ks)


def video_folds(videos: np.ndarray, folds: int, where: Path) -> list[np.ndarray]:
    """The validation videos split into ``folds`` groups; ConfigError when the split has fewer videos
    than ``folds`` (a group would hold none) or fewer than two."""
    unique = np.unique(videos)
    if len(unique) < 2:
        raise ConfigError(f"the validation split of {where} holds {len(unique)} video(s); cross-validation by "
                          "video needs at least 2, so this run cannot be compared here")
    if folds > len(unique):
        raise ConfigError(f"--folds {folds}: the validation split of {where} holds {len(unique)} videos, so it "
                          f"allows --folds 2 to {len(unique)}; pass one in that range")
    return np.array_split(unique, folds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probability", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    torch.set_num_threads(1)
    files = sorted(Path(args.run_dir).glob("seed_*/best.pt"))
    if not files:
        print(f"error: {args.run_dir} holds no seed_*/best.pt", file=sys.stderr)
        return 1
    return run_reporting_errors(lambda: compare(files, args.folds), "interrupted")[1]


def compare(files: list[Path], folds: int) -> None:
    """Print the table of every option for the checkpoints ``files`` (one per seed)."""
    device = torch.device("cpu")
    cv = {s: {p: [] for p in RATES} for s in PROBABILITY_SOURCES}
    test = {s: {p: [] for p in RATES} for s in PROBABILITY_SOURCES}
    test_p = {s: {p: [] for p in RATES} for s in PROBABILITY_SOURCES}
    cv_p = {s: {p: [] for p in RATES} for s in PROBABILITY_SOURCES}  # each seed's held-out P(positive)
    for f in files:
        model, saved, stats, _, _ = load_for_eval(f, device)
        data, _ = load_and_standardize(saved, stats)
        valid, tst = data.splits["valid"], data.splits["test"]
        v_ks, v_s, v_l = pattern_outputs(model, valid, saved, device)
        videos = np.array([i.split("$_$")[0] for i in valid.ids])
        groups = video_folds(videos, folds, f)
        held = {s: {p: np.zeros(valid.n) for p in RATES} for s in PROBABILITY_SOURCES}
        for g in groups:
            out = np.isin(videos, g)
            fold_cal = fit(v_ks, v_s, v_l, valid.labels, saved.num_classes, np.flatnonzero(~out))
            for s in PROBABILITY_SOURCES:
                for p in RATES:
                    held[s][p][out] = at_rate(fold_cal, v_ks, v_s, v_l, p, valid.n, np.flatnonzero(out), s)
        non0_v, non0_t = valid.labels != 0, tst.labels != 0
        cal = fit(v_ks, v_s, v_l, valid.labels, saved.num_classes, np.arange(valid.n))
        t_ks, t_s, t_l = pattern_outputs(model, tst, saved, device)
        for s in PROBABILITY_SOURCES:
            for p in RATES:
                cv[s][p].append(probability_scores(held[s][p][non0_v], valid.labels[non0_v] > 0))
                cv_p[s][p].append(held[s][p])
                pt = at_rate(cal, t_ks, t_s, t_l, p, tst.n, np.arange(tst.n), s)
                test_p[s][p].append(pt)
                test[s][p].append(probability_scores(pt[non0_t], tst.labels[non0_t] > 0))
        print(f"{f}: blend weight {cal.blend:.3f}, Platt (a, b) TAV {cal.platt[6].round(3).tolist()}", flush=True)
    y = tst.labels[non0_t] > 0

    def row(name: str, per: dict) -> str:
        cells = [f"{np.mean([m[k] for m in per[p]]):.4f}" for k in ("brier", "nll") for p in RATES]
        ece = [f"{np.mean([m['ece'] for m in per[p]]):.3f} ({np.mean([m['ece_twin_hi'] for m in per[p]]):.3f})"
               for p in RATES]
        return f"| {name} | " + " | ".join(cells + ece) + " |"

    head = " | ".join([f"Brier p={p}" for p in RATES] + [f"NLL p={p}" for p in RATES]
                      + [f"ECE (twin 95th) p={p}" for p in RATES])
    print(f"\n{len(files)} seed(s); Brier/NLL of P(positive) on non-0 samples, mean over seeds\n")
    print(f"| option | {head} |\n|" + " --- |" * (1 + 3 * len(RATES)))
    for s in PROBABILITY_SOURCES:
        print(row(f"valid, {folds}-fold CV by video: {s}", cv[s]))
    y_v = valid.labels[non0_v] > 0
    for s in PROBABILITY_SOURCES:
        ens = {p: [probability_scores(np.mean(cv_p[s][p], axis=0)[non0_v], y_v)] for p in RATES}
        print(row(f"valid, {folds}-fold CV by video, ensemble of {len(files)} seeds: {s}", ens))
    for s in PROBABILITY_SOURCES:
        print(row(f"test: {s}", test[s]))
    for s in PROBABILITY_SOURCES:
        ens = {p: [probability_scores(np.mean(test_p[s][p], axis=0)[non0_t], y)] for p in RATES}
        print(row(f"test, ensemble of {len(files)} seeds: {s}", ens))


if __name__ == "__main__":
    sys.exit(main())
