"""The one-run tables: the printed table (mean ± std over seeds, then the deep ensemble) and the
rows of ``results.csv``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.metrics import COUNT_NAMES, METRIC_NAMES

TABLE_METRICS = ("acc2_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc5", "acc7", "brier", "nll", "ece")
TWIN_COLUMN = "ece twin 90%"
ENSEMBLE_SECTIONS = (("missing_rate", "modality missing rate p"), ("subsets", "modalities present"))



def results_frame(results: dict, std: dict, ensemble: dict | None = None) -> pd.DataFrame:
    """One row per (section, key): its sample counts, every metric's mean and std over seeds; the deep
    ensemble's rows (``section`` ``ensemble_missing_rate`` / ``ensemble_subsets``, one prediction: std
    empty)."""
    rows = []
    for section in ("missing_rate", "frame_missing_rate", "subsets"):
        for key, mean in results.get(section, {}).items():
            row = {"section": section, "key": key, **{c: mean.get(c) for c in COUNT_NAMES}}
            for m in METRIC_NAMES:
                row[m] = mean.get(m, np.nan)
                row[f"{m}_std"] = std[section][key].get(m, np.nan)
            rows.append(row)
    for section, _ in ENSEMBLE_SECTIONS if ensemble else ():
        for key, vals in ensemble[section].items():
            rows.append({"section": f"ensemble_{section}", "key": key, **{c: vals.get(c) for c in COUNT_NAMES},
                         **{k: v for m in METRIC_NAMES for k, v in ((m, vals[m]), (f"{m}_std", np.nan))}})
    return pd.DataFrame(rows)


def _cell(mean: float | None, sd: float | None, m: str) -> str:
    if mean is None:  # a metric an older result does not carry
        return "-"
    if m in ("mae", "corr", "ece", "brier", "nll"):
        d = 4 if m in ("brier", "nll") else 3
        return f"{mean:.{d}f}" if sd is None else f"{mean:.{d}f}±{sd:.{d}f}"
    return f"{100 * mean:.1f}" if sd is None else f"{100 * mean:.1f}±{100 * sd:.1f}"


def _block(title: str, block: dict, std: dict | None) -> list[str]:
    """Rows of one section; ``std`` None: single values (one seed, or the ensemble)."""
    header = ["", *[m.replace("_", " ") for m in TABLE_METRICS], TWIN_COLUMN]
    rows = []
    for key, vals in block.items():
        cells = [_cell(vals.get(m), None if std is None else std[key].get(m), m) for m in TABLE_METRICS]
        twin = (f"{vals['ece_twin_mean']:.3f} [{vals['ece_twin_lo']:.3f}, {vals['ece_twin_hi']:.3f}]"
                if "ece_twin_mean" in vals else "-")
        rows.append([key, *cells, twin])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    counts = sorted({(v.get("n"), v.get("n_non0")) for v in block.values() if "n" in v})
    title = title.replace("(test", "(test" + "".join(f", n = {a} (non-0 {b})" for a, b in counts), 1)
    return [title, fmt.format(*header), *[fmt.format(*r) for r in rows], ""]


def _over_rates(title: str, mean: dict) -> str:
    nan = float("nan")
    return (f"{title}: Acc-2 non-0 {100 * mean['acc2_non0']:.1f}  F1 non-0 {100 * mean['f1_non0']:.1f}  "
            f"MAE {mean['mae']:.3f}  Brier {mean.get('brier', nan):.4f}  NLL {mean.get('nll', nan):.4f}  "
            f"ECE {mean['ece']:.3f}")


def format_table(results: dict, std: dict, n_seeds: int, note: str = "", ensemble: dict | None = None) -> str:
    """The printed table: random missing rates, subsets, frame-level rates; mean ± std in %; then the
    deep ensemble of the seeds as its own sections. ``note`` names the predictions used."""
    lines = [f"predictions: {note}", ""] if note else []
    for section, title in (*ENSEMBLE_SECTIONS, ("frame_missing_rate", "frame missing rate r")):
        if results.get(section):
            lines += _block(f"{title} (test; mean ± std over {n_seeds} seed(s); accuracies in %; "
                            f"{TWIN_COLUMN}: ECE of a calibrated predictor with the same confidences)",
                            results[section], std[section] if n_seeds > 1 else None)
    mean = results.get("mean_over_rates", {}).get("missing_rate")
    if mean:
        lines.append(_over_rates("mean over missing rates", mean))
    if ensemble:
        lines.append("")
        for section, title in ENSEMBLE_SECTIONS:
            lines += _block(f"deep ensemble of the {n_seeds} seeds, {title} (test; one prediction: the mean of the "
                            f"seeds' calibrated scores and P(positive); not part of mean ± std)",
                            ensemble[section], None)
        lines.append(_over_rates("deep ensemble, mean over missing rates", ensemble["mean_over_rates"]["missing_rate"]))
    return "\n".join(lines)
