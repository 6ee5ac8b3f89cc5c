"""Epoch time of AttentionRobustV4 vs the ef_lstm baseline on the same data and batch size.

Data: the embedded synthetic set (``datasets.make_synthetic()``: 1284 train samples, length 50,
dims 300/5/20), standardized as a run does. Each model trains through the real trainer
(``Trainer.train_epoch``: loader, train-time modality dropout, AdamW, clipping, schedule);
epochs of the two models alternate and are compared by their medians. Target: <= 2x.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import interleaved, median, verdict
from datasets import Standardizer, make_synthetic
from training.config import Config
from training.trainer import Trainer

MODELS = ("attention_robust_v4", "ef_lstm")


def run(quick: bool = False) -> dict:
    data = make_synthetic()
    Standardizer.fit(data.splits["train"]).apply(data)
    reps = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: Trainer(Config(model=m, epochs=reps + 1, device="cpu"), data, 1111, Path(tmp) / m,
                               progress=False) for m in MODELS}
        t = interleaved({m: tr.train_epoch for m, tr in trainers.items()}, reps, warmup=1)
    n, bs = data.splits["train"].n, Config().batch_size
    for m in MODELS:
        print(f"{m:>20}: epoch median {median(t[m]):.2f} s  ({n / median(t[m]):.0f} samples/s; "
              f"epochs {', '.join(f'{x:.2f}' for x in t[m])})")
    ratio = median(t["attention_robust_v4"]) / median(t["ef_lstm"])
    print(f"attention_robust_v4 / ef_lstm = {ratio:.2f}x  {verdict(ratio, 2.0)}  ({n} samples, batch {bs})")
    return {f"{m}_epoch_s": median(t[m]) for m in MODELS} | {"ratio": ratio, "reps": reps, "n_train": n}
