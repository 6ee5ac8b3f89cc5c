"""What a run leaves behind: the printed table, ``metrics.json``, ``results.csv``,
``predictions.npz`` and the plots ``missing_rates.png``, ``calibration.png``, ``risk_coverage.png``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from datasets import SUBSETS, rate_key
from training.metrics import COUNT_NAMES, METRIC_NAMES, positive_probability

TABLE_METRICS = ("acc2_has0", "acc2_non0", "f1_non0", "mae", "corr", "acc5", "acc7", "ece")


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no stray file


def results_frame(results: dict, std: dict) -> pd.DataFrame:
    """One row per (section, key): its sample counts, every metric's mean and std over seeds."""
    rows = []
    for section in ("missing_rate", "frame_missing_rate", "subsets"):
        for key, mean in results.get(section, {}).items():
            row = {"section": section, "key": key, **{c: mean.get(c) for c in COUNT_NAMES}}
            for m in METRIC_NAMES:
                row[m] = mean[m]
                row[f"{m}_std"] = std[section][key][m]
            rows.append(row)
    return pd.DataFrame(rows)


def format_table(results: dict, std: dict, n_seeds: int) -> str:
    """The printed table: random missing rates, subsets, frame-level rates; mean ± std in %."""
    def cell(section: str, key: str, m: str) -> str:
        mean, sd = results[section][key][m], std[section][key][m]
        if m in ("mae", "corr", "ece"):
            return f"{mean:.3f}±{sd:.3f}" if n_seeds > 1 else f"{mean:.3f}"
        return f"{100 * mean:.1f}±{100 * sd:.1f}" if n_seeds > 1 else f"{100 * mean:.1f}"

    header = ["", *[m.replace("_", " ") for m in TABLE_METRICS]]
    lines = []
    for section, title in (("missing_rate", "modality missing rate p"), ("subsets", "modalities present"),
                           ("frame_missing_rate", "frame missing rate r")):
        if not results.get(section):
            continue
        rows = [[key, *[cell(section, key, m) for m in TABLE_METRICS]] for key in results[section]]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        counts = sorted({(v.get("n"), v.get("n_non0")) for v in results[section].values() if "n" in v})
        n = "".join(f", n = {a} (non-0 {b})" for a, b in counts)
        lines += [f"{title} (test{n}; mean ± std over {n_seeds} seed(s); accuracies in %)",
                  fmt.format(*header), *[fmt.format(*r) for r in rows], ""]
    mean = results.get("mean_over_rates", {}).get("missing_rate")
    if mean:
        lines.append(f"mean over missing rates: Acc-2 non-0 {100 * mean['acc2_non0']:.1f}  "
                     f"F1 non-0 {100 * mean['f1_non0']:.1f}  MAE {mean['mae']:.3f}  ECE {mean['ece']:.3f}")
    return "\n".join(lines)


def save_predictions(path: Path, labels: np.ndarray, rates: list[float], per_seed: list[dict],
                     ids: np.ndarray | None = None) -> None:
    arrays = [r["arrays"] for r in per_seed]
    extra = {} if ids is None else {"ids": np.asarray(ids, dtype=str)}
    if all("fusion_weights" in a for a in arrays):
        extra["fusion_weights"] = np.stack([a["fusion_weights"] for a in arrays])
    tmp = path.with_name(path.stem + ".tmp.npz")
    try:
        np.savez_compressed(
            tmp, labels=labels.astype(np.float32), rates=np.asarray(rates, dtype=np.float32),
            preds=np.stack([a["preds"] for a in arrays]), masks=np.stack([a["masks"] for a in arrays]),
            probs=np.stack([a["probs"] for a in arrays]), subset_names=np.array(list(SUBSETS)),
            subset_preds=np.stack([a["subset_preds"] for a in arrays]), **extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no stray file


def _rate_index(rates: np.ndarray, p: float) -> int | None:
    idx = np.flatnonzero(np.isclose(rates, p))
    return int(idx[0]) if len(idx) else None


def plot_missing_rates(results: dict, std: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["missing_rate"])
    x = [float(k) for k in keys]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, label in (("acc2_non0", "Acc-2 (non-0)"), ("f1_non0", "F1 (non-0)")):
        y = [100 * results["missing_rate"][k][m] for k in keys]
        e = [100 * std["missing_rate"][k][m] for k in keys]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    ax.set_xlabel("modality missing rate p")
    ax.set_ylabel("%")
    ax.set_title(title or "test accuracy under random missing modalities")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _binary_conf(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the binary non-0 task, seeds pooled: probs (S, N, C), labels (N,)."""
    non0 = labels != 0
    p = np.concatenate([positive_probability(pr[non0]) for pr in probs])
    y = np.tile(labels[non0] > 0, len(probs))
    return np.maximum(p, 1 - p), (p >= 0.5) == y


def plot_calibration(npz: dict, path: Path, rates: tuple[float, ...] = (0.0, 0.5)) -> None:
    """Reliability diagrams (10 equal-width confidence bins) at the given missing rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.metrics import ece_score

    shown = [(p, i) for p in rates if (i := _rate_index(npz["rates"], p)) is not None]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.5 * max(1, len(shown)), 4), squeeze=False)
    for ax, (p, i) in zip(axes[0], shown):
        conf, correct = _binary_conf(npz["probs"][:, i], npz["labels"])
        bins = np.minimum((conf * 10).astype(int), 9)
        centres, accs, counts = [], [], []
        for b in range(10):
            sel = bins == b
            if sel.any():
                centres.append(conf[sel].mean())
                accs.append(correct[sel].mean())
                counts.append(sel.sum())
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        ax.bar(centres, accs, width=0.08, alpha=0.7, label="accuracy per bin")
        p_pos = np.where(correct, conf, 1 - conf)  # any P(pos) with the same conf/correct gives the same ECE
        ece = ece_score(p_pos, np.ones_like(correct))
        ax.set_title(f"p = {rate_key(p)}: ECE {ece:.3f} (seeds pooled)")
        ax.set_xlim(0.45, 1.0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the most confident fraction of predictions, for coverage 1/N .. 1."""
    order = np.argsort(-conf, kind="stable")
    acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    cov = np.arange(1, len(order) + 1) / len(order)
    return cov, acc


def plot_risk_coverage(npz: dict, path: Path, rates: tuple[float, ...] = (0.0, 0.5)) -> dict:
    """Accuracy against coverage when the least confident predictions are withheld."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in rates:
        i = _rate_index(npz["rates"], p)
        if i is None:
            continue
        cov, acc = risk_coverage(*_binary_conf(npz["probs"][:, i], npz["labels"]))
        ax.plot(cov, 100 * acc, label=f"p = {rate_key(p)}")
        summary[rate_key(p)] = {f"acc_at_{c}": float(acc[max(0, int(np.ceil(c * len(acc))) - 1)])
                              for c in (0.5, 0.8, 1.0)}
    ax.set_xlabel("coverage (fraction of predictions kept, most confident first)")
    ax.set_ylabel("Acc-2 non-0 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return summary


def ids_digest(ids: np.ndarray) -> str:
    """A short SHA-256 of the sample ids in order: equal digests, same samples in the same order."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def data_block(data, split: str = "test") -> dict:
    """What ``metrics.json`` records of the data a run used: source, format, the split's counts and
    ids digest, and the reader's notes (padding moved, segments dropped, folds used)."""
    sp = data.splits[split]
    return {"source": data.source, "format": data.format, "split": split, "n": sp.n,
            "n_non0": int((sp.labels != 0).sum()), "ids_sha256": ids_digest(sp.ids), "notes": list(data.notes)}


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
    plot_missing_rates(metrics["results"], metrics["std"], out_dir / "missing_rates.png")
    plot_calibration(npz, out_dir / "calibration.png")
    metrics["risk_coverage"] = plot_risk_coverage(npz, out_dir / "risk_coverage.png")
    results_frame(metrics["results"], metrics["std"]).to_csv(out_dir / "results.csv", index=False)
    write_json_atomic(metrics, out_dir / "metrics.json")
    return format_table(metrics["results"], metrics["std"], len(per_seed))
