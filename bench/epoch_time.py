"""Epoch time of AttentionRobustV4 vs the ef_lstm baseline, and of its three encoders, on the same
data and batch size.

Data: the embedded synthetic set (``datasets.make_synthetic()``: 1284 train samples, length 50,
dims 300/5/20), standardized as a run does. Each configuration trains through the real trainer
(``Trainer.train_epoch``: loader, train-time modality dropout, AdamW, clipping, schedule);
epochs of all configurations alternate and are compared by their medians. Targets:
AttentionRobustV4 (default MLP encoder) / ef_lstm <= 2x; the CfC / LSTM encoder ratio is reported
(no target: ``ncps`` steps its cells in a Python loop, one call per time step and direction).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import interleaved, median, verdict
from datasets import Standardizer, make_synthetic
from training.config import Config
from training.trainer import Trainer

# label -> Config overrides
RUNS = {
    "attention_robust_v4": {},
    "ef_lstm": {"model": "ef_lstm"},
    "v4 lstm encoder": {"encoder": "lstm"},
    "v4 cfc encoder": {"encoder": "cfc"},
}


def run(quick: bool = False, device: str = "cpu") -> dict:
    data = make_synthetic()
    Standardizer.fit(data.splits["train"]).apply(data)
    reps = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {label: Trainer(Config(**kw, epochs=reps + 1, device=device), data, 1111,
                                   Path(tmp) / label.replace(" ", "_"), progress=False)
                    for label, kw in RUNS.items()}
        t = interleaved({label: tr.train_epoch for label, tr in trainers.items()}, reps, warmup=1)
    n, bs = data.splits["train"].n, Config().batch_size
    for label in RUNS:
        print(f"{label:>20}: epoch median {median(t[label]):.2f} s  ({n / median(t[label]):.0f} samples/s; "
              f"epochs {', '.join(f'{x:.2f}' for x in t[label])})")
    ratio = median(t["attention_robust_v4"]) / median(t["ef_lstm"])
    print(f"attention_robust_v4 / ef_lstm = {ratio:.2f}x  {verdict(ratio, 2.0)}  ({n} samples, batch {bs})")
    cfc = median(t["v4 cfc encoder"]) / median(t["v4 lstm encoder"])
    print(f"cfc encoder / lstm encoder = {cfc:.2f}x  (reported, no target)")
    return ({f"{label.replace(' ', '_')}_epoch_s": median(t[label]) for label in RUNS}
            | {"ratio": ratio, "cfc_over_lstm": cfc, "reps": reps, "n_train": n})
