"""The random-missing sweep (8 rates) plus the 7 fixed subsets vs one plain evaluation pass.

Model: AttentionRobustV4 (default config, untrained weights: the cost does not depend on them),
at two shapes, each on its own generated test split:

* the embedded synthetic set: 686 test samples, length 50, dims 300/5/20 (with the parts of the
  cost and the test-time adaptation below);
* MOSEI's unaligned shape, the shape of issue 11's target (text 50x768, audio 500x74, vision
  500x35, random true lengths): 686 test samples on the CPU, MOSEI's 4,659 on CUDA (256 with
  ``--quick``).

plain: one evaluation pass, ``fuse_many`` with one mask (every modality present; it encodes and
fuses chunk by chunk) + ``sentiment_metrics``.
sweep: ``Evaluator.sweep`` with the 8 default rates and no frame-level rates: one encode, then
the fusion for 15 masks (8 rates + 7 subsets) and their metrics (all 15 in one batched call,
``sentiment_metrics_many``, with P(positive), Brier, NLL and the ECE band). Because ``encode`` never
reads presence, the sweep re-uses the encoded states; and because the 15 masks hold only 7
presence patterns, each chunk is fused under those 7 patterns only (``Evaluator.group_patterns``,
the default: every 256 rows under all their patterns in one call) and every mask takes its rows
from those. Target: <= 1.5x.

The sweep is also timed with the other choice of ``Evaluator.group_patterns`` (one pass per
pattern, each skipping the proxy attention's work for the modalities its pattern lacks), reported
without a target.

Test-time adaptation (``--tta tent``, one step, batches of 32) is timed against the same sweep
without it: ``fusion`` adapts fuse-side parameters and reuses the encoded states; ``norm`` includes
the encoder LayerNorms, so every batch is re-encoded twice per mask (reported, no target).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench import interleaved, median, spread, verdict
from bench.shapes import SHAPES, make_shaped
from datasets import Split, Standardizer, make_synthetic
from modules.registry import create_model
from training.config import DEFAULT_RATES, Config
from training.evaluate import Evaluator
from training.metrics import sentiment_metrics
from training.tta import Tent


def _passes(evaluator: Evaluator, test: Split) -> dict:
    """The plain pass and the sweep of ``evaluator`` on ``test``, and the sweep with the other choice
    of ``group_patterns`` (reported, no target), as callables."""
    full = np.ones((test.n, 3), dtype=bool)
    other = dataclasses.replace(evaluator, group_patterns=not evaluator.group_patterns)

    def plain() -> None:  # one evaluation pass: encode and fuse chunk by chunk, then the metrics
        fused = evaluator.fuse_many(test, [full])[0]
        sentiment_metrics(fused.score, test.labels)

    return {"plain": plain, "sweep": lambda: evaluator.sweep(test, DEFAULT_RATES, []),
            "other": lambda: other.sweep(test, DEFAULT_RATES, [])}


def _other(evaluator: Evaluator) -> str:
    """What the ``other`` sweep of ``_passes`` does."""
    return "one pass per pattern" if evaluator.group_patterns else "patterns grouped in one pass"


def _mosei(quick: bool, device: torch.device) -> dict:
    """plain vs sweep on a MOSEI-shaped test split (issue 11's shape)."""
    n = 256 if quick else (4659 if device.type == "cuda" else 686)  # MOSEI's test split where time allows
    data = make_shaped(SHAPES["mosei"], (64, 32, n))
    Standardizer.fit(data.splits["train"]).apply(data)
    cfg = Config()
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg, data.dims).to(device).eval()
    evaluator = Evaluator.from_config(model, cfg, device)
    t = interleaved(_passes(evaluator, data.splits["test"]), 2 if quick else 3)
    ratio = median(t["sweep"]) / median(t["plain"])
    print(f"MOSEI shape ({n} test samples; text 50x768, audio 500x74, vision 500x35):")
    print(f"  plain pass: {spread(t['plain'])}")
    print(f"  sweep     : {spread(t['sweep'])}")
    print(f"  sweep / plain = {ratio:.2f}x  {verdict(ratio, 1.5)}")
    print(f"  sweep, {_other(evaluator)}: {spread(t['other'])}  ({median(t['other']) / median(t['plain']):.2f}x)")
    return {"mosei_n": n, "mosei_plain_ms": 1e3 * median(t["plain"]), "mosei_sweep_ms": 1e3 * median(t["sweep"]),
            "mosei_ratio": ratio, "mosei_other_grouping_ms": 1e3 * median(t["other"])}


def run(quick: bool = False, device: str = "cpu") -> dict:
    data = make_synthetic()
    Standardizer.fit(data.splits["train"]).apply(data)
    test = data.splits["test"]
    cfg = Config()
    torch.manual_seed(0)
    cpu = torch.device(device)  # the device every pass runs on (the name is historical)
    model = create_model(cfg.model, cfg, data.dims).to(cpu).eval()
    full = np.ones((test.n, 3), dtype=bool)
    evaluator = Evaluator.from_config(model, cfg, cpu)
    passes = _passes(evaluator, test)
    sweep = passes["sweep"]

    states = evaluator.encode(test)
    parts = {"encode": lambda: evaluator.encode(test),
             "one fuse": lambda: evaluator.fuse(states, full),
             "one metrics": lambda: sentiment_metrics(np.zeros(test.n) + 0.1, test.labels)}
    # what dominates: the same fuse pass with proxy attention off (its token K/V projections live in fuse)
    cfg_np = Config(use_proxy_attention=False)
    torch.manual_seed(0)
    model_np = create_model(cfg_np.model, cfg_np, data.dims).to(cpu).eval()
    evaluator_np = Evaluator.from_config(model_np, cfg_np, cpu)
    states_np = evaluator_np.encode(test)
    parts["one fuse, no proxy attention"] = lambda: evaluator_np.fuse(states_np, full)
    reps = 3 if quick else 5
    t = interleaved(passes, reps, warmup=1)
    p = interleaved(parts, reps, warmup=1)
    tta = interleaved({"sweep": sweep} | {
        f"sweep + tent {which}": (lambda w=which: dataclasses.replace(evaluator, tta=Tent(model, w)).sweep(
            test, DEFAULT_RATES, []))
        for which in ("fusion", "norm")}, 1 if quick else 3, warmup=0)
    ratio = median(t["sweep"]) / median(t["plain"])
    print(f"embedded synthetic shape ({test.n} test samples; length 50, dims 300/5/20):")
    print(f"plain pass (encode + fuse + metrics): {spread(t['plain'])}")
    print(f"sweep (8 rates + 7 subsets)         : {spread(t['sweep'])}")
    for k, v in p.items():
        print(f"  component {k:>28}: {spread(v)}")
    print(f"sweep / plain = {ratio:.2f}x  {verdict(ratio, 1.5)}  ({test.n} test samples)")
    print(f"sweep, {_other(evaluator)}: {spread(t['other'])}  ({median(t['other']) / median(t['plain']):.2f}x)")
    for k, v in tta.items():
        print(f"{k:>20}: {spread(v)}  ({median(v) / median(tta['sweep']):.1f}x the sweep without)")
    mosei = _mosei(quick, cpu)
    return {**mosei, "plain_ms": 1e3 * median(t["plain"]), "sweep_ms": 1e3 * median(t["sweep"]), "ratio": ratio,
            "other_grouping_ms": 1e3 * median(t["other"]),
            **{f"{k.replace(' ', '_').replace(',', '')}_ms": 1e3 * median(v) for k, v in p.items()},
            **{f"tta_{k.replace(' ', '_')}_ms": 1e3 * median(v) for k, v in tta.items()}}
