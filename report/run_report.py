"""What a run leaves behind: the printed table, ``metrics.json``, ``results.csv``,
``predictions.npz`` and the plots ``missing_rates.png``, ``calibration.png``, ``risk_coverage.png``.

Every table and figure names the prediction it uses (``metrics["prediction"]``): decisions and
errors come from the reported score, Brier/NLL/ECE from the reported P(positive).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from datasets import SUBSETS
from training.atomic import atomic_open, write_json, write_npz

from .plots import plot_calibration, plot_missing_rates, plot_risk_coverage
from .tables import format_table, results_frame


def save_predictions(path: Path, labels: np.ndarray, rates: list[float], per_seed: list[dict],
                     ids: np.ndarray | None = None) -> None:
    """``preds``/``probs``/``p_pos`` ``(S, R, N)`` per seed and rate (``p_pos``: the reported P(positive)),
    ``subset_preds``/``subset_p_pos`` ``(S, 7, N)``, ``masks``, ``labels``, ``rates``, ``ids``."""
    arrays = [r["arrays"] for r in per_seed]
    extra = {k: np.stack([a[k] for a in arrays]) for k in ("fusion_weights", "p_pos", "subset_p_pos")
             if all(k in a for a in arrays)}
    if ids is not None:
        extra["ids"] = np.asarray(ids, dtype=str)
    write_npz(path, compressed=True, labels=labels.astype(np.float32), rates=np.asarray(rates, dtype=np.float32),
              preds=np.stack([a["preds"] for a in arrays]), masks=np.stack([a["masks"] for a in arrays]),
              probs=np.stack([a["probs"] for a in arrays]), subset_names=np.array(list(SUBSETS)),
              subset_preds=np.stack([a["subset_preds"] for a in arrays]), **extra)


def ids_digest(ids: np.ndarray) -> str:
    """A short SHA-256 of the sample ids in order: equal digests, same samples in the same order."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def data_block(data, split: str = "test") -> dict:
    """What ``metrics.json`` records of the data a run used: source, format, the split's counts, the
    digests of its ids and of its labels (float32), and the reader's notes (padding moved, segments
    dropped, folds used)."""
    sp = data.splits[split]
    labels = hashlib.sha256(np.ascontiguousarray(sp.labels, dtype=np.float32).tobytes()).hexdigest()[:16]
    return {"source": data.source, "format": data.format, "split": split, "n": sp.n,
            "n_non0": int((sp.labels != 0).sum()), "ids_sha256": ids_digest(sp.ids), "labels_sha256": labels,
            "notes": list(data.notes)}


def write_report(out_dir: Path, metrics: dict, per_seed: list[dict], labels: np.ndarray,
                 rates: list[float], data=None) -> str:
    """Write every artefact into ``out_dir`` and return the printed table.

    ``data`` (the MultimodalData) adds the test ``ids`` to predictions.npz and a ``data`` block to
    metrics.json (see ``data_block``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = None
    if data is not None:
        ids = data.splits["test"].ids
        metrics["data"] = data_block(data)
    save_predictions(out_dir / "predictions.npz", labels, rates, per_seed, ids)
    with np.load(out_dir / "predictions.npz") as z:
        npz = {k: z[k] for k in z.files}
    note = metrics.get("prediction", "")
    plot_missing_rates(metrics["results"], metrics["std"], out_dir / "missing_rates.png", note=note)
    plot_calibration(npz, out_dir / "calibration.png", note=note)
    metrics["risk_coverage"] = plot_risk_coverage(npz, out_dir / "risk_coverage.png", note=note)
    with atomic_open(out_dir / "results.csv") as fh:
        results_frame(metrics["results"], metrics["std"], metrics.get("ensemble")).to_csv(fh, index=False)
    write_json(metrics, out_dir / "metrics.json")
    return format_table(metrics["results"], metrics["std"], len(per_seed), note, metrics.get("ensemble"))
