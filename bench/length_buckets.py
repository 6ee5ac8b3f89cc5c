"""``--length_buckets`` against the same model without it, at MOSI and MOSEI shapes.

Training samples/s of the default model and ``--encoder lstm``, each with and without
``--length_buckets`` (batches of similar length, each cut to its longest row), trained side by side
through ``Trainer.train_epoch`` (``bench.throughput.measure``: interleaved epochs, medians) on
generated data whose true lengths are drawn two ways (``bench.shapes.LENGTHS``):

* ``independent``: each modality's length uniform in [L/5, L] on its own, so sorting rows by their
  longest modality leaves the others varied (a lower bound);
* ``duration``: one fraction per row, uniform in [0.2, 1], times every modality's L, as the audio and
  video of a real utterance follow its duration.

No target: the figures say what the option gives. Not with ``--compile`` (refused).
"""

from __future__ import annotations

import torch

from bench.shapes import LENGTHS, SHAPES
from bench.throughput import measure

MODELS: dict[str, dict] = {
    "default": {},
    "default+buckets": {"length_buckets": True},
    "lstm": {"encoder": "lstm"},
    "lstm+buckets": {"encoder": "lstm", "length_buckets": True},
}


def run(quick: bool = False, device: str = "cpu", n_train: int | None = None,
        shapes: dict[str, dict] | None = None) -> dict:
    dev = torch.device(device)
    if n_train is None:
        n_train = (64 if quick else 128) if dev.type == "cpu" else (1024 if quick else 4096)
    reps = 1 if quick else 3
    out: dict = {}
    for shape, layout in (shapes or SHAPES).items():
        for lengths in LENGTHS:
            figs = measure(layout, n_train, dev, reps, MODELS, lengths)
            print(f"{shape} shape, {lengths} lengths, {n_train} train samples, batch 32, {dev}:")
            for name in ("default", "lstm"):
                plain, cut = figs[name]["samples_per_s"], figs[f"{name}+buckets"]["samples_per_s"]
                print(f"  {name:>8}: {plain:8.1f} samples/s, with --length_buckets {cut:8.1f}  ({cut / plain:.2f}x)")
            out[f"{shape}/{lengths}"] = figs
    return out
