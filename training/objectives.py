"""The one table of objectives, read by ``--select_metric`` (best epoch), ``tune.py --objective``
and ``Evaluator.validation_score``. Torch-free, so ``training.config`` imports it cheaply.

name -> (metric of ``training.metrics.METRIC_NAMES``, missing rates it is averaged over).
"""

from __future__ import annotations

ROBUST_RATES = (0.0, 0.3, 0.5, 0.7)
OBJECTIVES: dict[str, tuple[str, tuple[float, ...]]] = {
    "f1_robust": ("f1_non0", ROBUST_RATES), "f1_full": ("f1_non0", (0.0,)),
    "acc2_robust": ("acc2_non0", ROBUST_RATES), "acc2_full": ("acc2_non0", (0.0,)),
    "mae": ("mae", ROBUST_RATES), "ece": ("ece", ROBUST_RATES),
    "corr": ("corr", ROBUST_RATES), "acc7": ("acc7", ROBUST_RATES),
    "brier": ("brier", ROBUST_RATES), "nll": ("nll", ROBUST_RATES),
}
LOWER_IS_BETTER = frozenset({"mae", "ece", "brier", "nll"})  # metrics an objective minimises
NOT_OBJECTIVES = frozenset({"ece_twin_mean", "ece_twin_lo", "ece_twin_hi"})  # ECE's reference band, not a score
