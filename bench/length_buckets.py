"""``--length_buckets`` against the same model without it, at MOSI and MOSEI shapes.

Training samples/s of the default model and ``--encoder lstm``, each with and without
``--length_buckets`` (batches of similar length, each cut to its longest row), trained side by side
through ``Trainer.train_epoch`` (``bench.throughput.measure``: interleaved epochs, medians) on
generated data whose true lengths are drawn two ways (``bench.shapes.LENGTHS``):

* ``independent``: each modality's length uniform in [L/5, L] on its own, so sorting rows by their
  longest modality leaves the others varied (a lower bound);
* ``duration``: one fraction per row, uniform in [0.2, 1], times every modality's L, as the audio and
  video of a real utterance follow its duration.

With ``duration`` lengths the same pairs are also measured with the training forward compiled
(``--compile reduce-overhead`` on CUDA, ``default`` on the CPU; not with ``quick`` on the CPU, where
compiling takes about a minute per model): there every batch is cut to one of
``datasets.batching.BUCKET_LEVELS`` fractions of the padded lengths, the least that holds its
longest row in every modality. (With ``independent`` lengths the text of some row nearly always
fills its 50 steps, so that fraction is nearly always 1.)

No target: the figures say what the option gives.
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


def compiled(device: torch.device) -> dict[str, dict]:
    """``MODELS`` with the training forward compiled: CUDA graphs on CUDA, inductor's kernels on the CPU."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return {f"{name}+compiled": {**over, "compile": mode} for name, over in MODELS.items()}


def run(quick: bool = False, device: str = "cpu", n_train: int | None = None,
        shapes: dict[str, dict] | None = None) -> dict:
    dev = torch.device(device)
    if n_train is None:
        n_train = (64 if quick else 128) if dev.type == "cpu" else (1024 if quick else 4096)
    reps = 1 if quick else 3
    out: dict = {}
    for shape, layout in (shapes or SHAPES).items():
        for lengths in LENGTHS:
            with_compiled = lengths == "duration" and not (quick and dev.type == "cpu")
            figs = measure(layout, n_train, dev, reps, MODELS | (compiled(dev) if with_compiled else {}), lengths)
            print(f"{shape} shape, {lengths} lengths, {n_train} train samples, batch 32, {dev}:")
            for name, suffix in [(n, s) for s in ("", "+compiled")[:1 + with_compiled] for n in ("default", "lstm")]:
                plain, cut = figs[name + suffix]["samples_per_s"], figs[f"{name}+buckets{suffix}"]["samples_per_s"]
                print(f"  {name + suffix:>16}: {plain:8.1f} samples/s, with --length_buckets {cut:8.1f}  "
                      f"({cut / plain:.2f}x)")
            out[f"{shape}/{lengths}"] = figs
    return out
