"""Speed and memory benchmarks (not tests): ``python -m bench [NAME ...]``.

Each benchmark module has ``run(quick: bool, device: str) -> dict`` that prints its figures, measured side by
side in one process (interleaved repetitions, medians), as ratios against the target. The
shared helpers below describe the machine and time callables.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

BENCHMARKS = ("aecf_gate", "epoch_time", "eval_sweep", "length_buckets", "memory", "throughput")


def check_device(name: str) -> str:
    """``name`` when it is cpu, or cuda[:N] with that card present; ValueError in one line otherwise."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


def machine(device: str = "cpu") -> str:
    """CPU model, cores, thread count, python and torch versions (and the GPU when used), in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}; {os.cpu_count()} logical cores; torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads); python {platform.python_version()}; {platform.system()} {platform.release()}; "
            f"load average at start {os.getloadavg()[0]:.2f}"
            + (f"; {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device != "cpu" else ""))


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, alternating A B B A ... so drift hits all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """Median and interquartile range as text, in milliseconds."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {1e3 * q[1]:.1f} ms (IQR {1e3 * q[0]:.1f}-{1e3 * q[2]:.1f}, n={len(xs)})"


def verdict(ratio: float, target: float) -> str:
    return f"{'MET' if ratio <= target else 'MISSED'} (target <= {target:g}x)"
