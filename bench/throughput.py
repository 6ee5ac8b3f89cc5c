"""Training throughput and op count per step of every model, side by side, at MOSI and MOSEI shapes.

Data: generated in memory at the MMSA unaligned shapes (``bench/shapes.py``): MOSI text (N, 50, 768),
audio (N, 375, 5), vision (N, 500, 20); MOSEI text (N, 50, 768), audio (N, 500, 74), vision
(N, 500, 35); a small N on the CPU. Each model trains through the real ``Trainer.train_epoch``
(batch 32, default config; bf16 autocast on CUDA): the default AttentionRobustV4 (mlp encoder),
``--encoder lstm`` without and with ``--stack_lstm`` (``modules/stacked_lstm.py``) and the baselines
tfn, lf_dnn, ef_lstm, and on CUDA the default model and ``--encoder lstm`` (both ways) with
``--compile reduce-overhead`` (``--length_buckets``: ``bench/length_buckets.py``).
Epochs of all models alternate and are compared by their medians; every figure is also given as a
ratio against the default model measured beside it.

Op count: one epoch under ``torch.profiler``, per training step: ``aten::`` ops dispatched, host
syncs outside the optimizer (``aten::_local_scalar_dense``: ``.item()``/``float()``/``bool()`` of a
tensor, plus ``aten::nonzero``), the optimizer's own ``.item()`` calls (fused AdamW reads each parameter's step
counter once inside its CPU loop, not a device sync, and none on CUDA), and on CUDA
the kernel launches (``cudaLaunchKernel`` and its kin).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench import interleaved, median
from bench.shapes import SHAPES, make_shaped
from datasets import Standardizer
from training.config import Config
from training.trainer import Trainer

MODELS: dict[str, dict] = {
    "default": {},
    "lstm": {"encoder": "lstm"},  # six LSTM runs per step, one per direction and modality
    "lstm+stacked": {"encoder": "lstm", "stack_lstm": True},  # one per modality (stack_groups)
    "tfn": {"model": "tfn"},
    "lf_dnn": {"model": "lf_dnn"},
    "ef_lstm": {"model": "ef_lstm"},
}
# on CUDA also the default model and --encoder lstm with the training forward compiled and replayed
# as CUDA graphs (``--compile reduce-overhead``; the first epoch, the warm-up, pays the compilation)
CUDA_MODELS: dict[str, dict] = {"default+graphs": {"compile": "reduce-overhead"},
                                "lstm+graphs": {"encoder": "lstm", "compile": "reduce-overhead"},
                                "lstm+stacked+graphs": {"encoder": "lstm", "compile": "reduce-overhead",
                                                        "stack_lstm": True}}


def op_counts(trainer: Trainer, device: torch.device) -> dict[str, float]:
    """Per training step: aten ops, host syncs, nonzero calls and (CUDA) kernel launches."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        trainer.train_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    steps = trainer.steps_per_epoch
    events = prof.events()

    def in_optimizer(e) -> bool:
        while e is not None:
            if e.name.startswith("Optimizer.step"):
                return True
            e = e.cpu_parent
        return False

    syncs = [e for e in events if e.name in ("aten::_local_scalar_dense", "aten::nonzero")]
    opt = sum(in_optimizer(e) for e in syncs)
    return {"aten_ops": sum(e.name.startswith("aten::") for e in events) / steps,
            "syncs": (len(syncs) - opt) / steps, "optimizer_items": opt / steps,
            "launches": sum("LaunchKernel" in e.name for e in events) / steps}


def measure(shape: str | dict, n_train: int, device: torch.device, reps: int, models: dict[str, dict] | None = None,
            lengths: str = "independent") -> dict[str, dict]:
    """samples/s and op counts per step of ``models`` (name -> Config overrides; default: ``MODELS``,
    and ``CUDA_MODELS`` on CUDA), trained side by side on generated data of ``shape``."""
    if models is None:
        models = MODELS | (CUDA_MODELS if device.type == "cuda" else {})
    # graphs compiled for an earlier shape or benchmark of this process: torch keeps at most 8 per
    # function and runs it uncompiled beyond, which would time the eager forward as "compiled"
    torch._dynamo.reset()
    data = make_shaped(shape, (n_train, 32, 32), lengths=lengths)
    Standardizer.fit(data.splits["train"]).apply(data)
    amp = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(Config(**over, epochs=reps + 3, device=str(device), amp=amp), data, 1111,
                                  Path(tmp) / name, progress=False)
                    for name, over in models.items()}

        def epoch(tr: Trainer):
            def fn() -> None:
                tr.train_epoch()
                sync()
            return fn

        times = interleaved({name: epoch(tr) for name, tr in trainers.items()}, reps, warmup=1)
        figs = {}
        for name, tr in trainers.items():
            samples = tr.steps_per_epoch * tr.cfg.batch_size
            figs[name] = {"samples_per_s": min(samples, n_train) / median(times[name]), **op_counts(tr, device)}
    return figs


def run(quick: bool = False, device: str = "cpu", n_train: int | None = None,
        shapes: dict[str, dict] | None = None) -> dict:
    """Print and return the figures of every model at every shape (``shapes``: name -> {modality:
    (L, D)}, default MOSI and MOSEI) with ``n_train`` training samples (default: small on the CPU)."""
    dev = torch.device(device)
    if n_train is None:
        n_train = (64 if quick else 128) if dev.type == "cpu" else (1024 if quick else 4096)
    reps = 1 if quick else 3
    out = {}
    for shape, layout in (shapes or SHAPES).items():
        figs = measure(layout, n_train, dev, reps)
        ref = figs["default"]
        print(f"{shape} shape ({', '.join(f'{m} {L}x{D}' for m, (L, D) in layout.items())}), "
              f"{n_train} train samples, batch 32, {dev}:")
        print(f"  {'model':>14} {'samples/s':>10} {'x default':>9} {'aten ops/step':>13} {'x default':>9} "
              f"{'syncs/step':>10} {'opt items':>9} {'launches/step':>13}")
        for name, f in figs.items():
            print(f"  {name:>14} {f['samples_per_s']:10.1f} {f['samples_per_s'] / ref['samples_per_s']:9.2f} "
                  f"{f['aten_ops']:13.0f} {f['aten_ops'] / ref['aten_ops']:9.2f} {f['syncs']:10.1f} "
                  f"{f['optimizer_items']:9.0f} {f['launches']:13.0f}")
        out[shape] = figs
    return out
