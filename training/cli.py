"""``python attention_robust_v4.py [flags]``: train, select on valid, sweep the test split, report.

Every error a user can cause (bad flags, unreadable data, a broken checkpoint, a non-finite
loss, an output folder that cannot be written) is a ``UserError`` and ends with one clear line on
stderr and a non-zero status; any other exception is a bug and keeps its traceback
(``ATTENTION_ROBUST_DEBUG=1`` shows the traceback of user errors too).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import RUNS_ROOT, Config, build_parser, config_from_args, new_run_dir, point_latest
from training.errors import UserError, writing

EXIT_ERROR = 1
_UNSET = object()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a stopped run, reported in one line."""
    return (UserError,)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    warnings.filterwarnings("ignore", message=".*TensorFloat32.*")


def run_reporting_errors(fn: Callable[[], Any], interrupted: str,
                         extra_errors: tuple[type[BaseException], ...] = ()) -> tuple[Any, int]:
    """``(fn(), 0)``; a user error or a failed allocation (``out_of_memory``) prints one ``error: ...``
    line instead (status 1), Ctrl-C prints ``interrupted`` (status 130). Any other exception
    propagates with its traceback."""
    try:
        return fn(), 0
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return None, 130
    except (*extra_errors, *user_errors()) as err:
        if os.environ.get("ATTENTION_ROBUST_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return None, EXIT_ERROR
    except (MemoryError, RuntimeError, OSError) as err:
        if not out_of_memory(err) or os.environ.get("ATTENTION_ROBUST_DEBUG"):
            raise
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        print(f"error: out of memory ({first[:200]}); try a smaller --batch_size or --hidden_dim, and for large "
              "data --feature_dtype float16 or --feature_cache DIR", file=sys.stderr)
        return None, EXIT_ERROR


# How a failed allocation reads where it is no MemoryError: torch's CPU allocator, a CUDA kernel or
# library that could not get device memory.
OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                          "CUDNN_STATUS_ALLOC_FAILED")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: numpy's MemoryError, CUDA's out-of-memory error, the
    system refusing memory (ENOMEM: a memory map of ``--feature_cache``, a worker process), or one of
    ``OUT_OF_MEMORY_MESSAGES``."""
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(err, OSError):
        return err.errno == errno.ENOMEM
    return any(m in str(err) for m in OUT_OF_MEMORY_MESSAGES)


def threads_ok(n: int) -> tuple[bool, str]:
    """Whether ``--threads n`` can be used here, and the error line when not: 0 (torch's default) up to
    this machine's CPU cores (more threads than cores only slow torch down, and a huge count fails
    allocating them)."""
    cores = os.cpu_count() or 1
    return 0 <= n <= cores, f"--threads must lie in 0..{cores} (0: torch's default; this machine has {cores} CPU cores)"


def release_unused_run_dir(folder: str, latest_before: str | None, root: str = RUNS_ROOT) -> None:
    """Undo ``new_run_dir`` for a run that failed before it wrote anything (e.g. a data file that
    cannot be read): remove ``folder`` if it holds nothing but the run lock and no process holds that
    lock, and point ``ROOT/latest`` back where it pointed before, if that folder is still there
    (otherwise remove the link); a ``latest`` another run has moved is left alone."""
    from training.run import remove_unused_run_folder

    path = Path(folder)
    if not remove_unused_run_folder(path):
        return
    latest = Path(root) / "latest"
    if latest.is_symlink() and os.readlink(latest) == path.name:
        if latest_before is not None and (Path(root) / latest_before).is_dir():
            point_latest(root, latest_before)
        else:
            latest.unlink(missing_ok=True)


def parse_command_line(argv: list[str] | None, prog: str) -> tuple[Config, set[str], int]:
    """(config, names of the config flags given explicitly, --threads)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog=prog)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads of this process (0: torch's default), as in tune.py")
    names = [f.name for f in dataclasses.fields(Config)]
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, _UNSET)))
    ok, message = threads_ok(ns.threads)
    if not ok:
        parser.error(message)
    given = {n for n in names if getattr(ns, n) is not _UNSET}
    threads_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    threads_only.add_argument("--threads")
    _, rest = threads_only.parse_known_args(argv)
    return config_from_args(rest, prog=prog), given, ns.threads


def main(argv: list[str] | None = None, prog: str = "attention_robust_v4.py") -> int:
    cfg, given, threads = parse_command_line(argv, prog)  # argparse prints the error line and exits 2 itself
    setup_logging(cfg.quiet)

    claimed: list[tuple[str, str | None]] = []  # (the folder this command made, runs/latest before it)

    def claim_run_dir() -> None:  # every run its own folder: runs/<model>_<data>_<time>, linked as runs/latest
        from training.run import check_startable

        check_startable(cfg)  # a typo in --model or a path, or a card this machine lacks: before a folder is claimed
        if cfg.output_dir is None and not cfg.eval_only:  # --eval_only picks a folder beside the evaluated run
            latest = os.path.join(RUNS_ROOT, "latest")
            before = os.readlink(latest) if os.path.islink(latest) else None
            with writing(RUNS_ROOT):
                cfg.output_dir = new_run_dir(cfg)
            claimed.append((cfg.output_dir, before))

    _, status = run_reporting_errors(claim_run_dir, "interrupted")
    if status:
        return status
    if threads:
        import torch

        torch.set_num_threads(threads)

    def run() -> dict:
        from training.run import evaluate_checkpoints, resume_settings, run_experiment

        if cfg.eval_only:
            return evaluate_checkpoints(cfg, given)
        return run_experiment(resume_settings(cfg, given))

    status = EXIT_ERROR  # until run() returns: a traceback (a bug, or ATTENTION_ROBUST_DEBUG) counts as failed
    try:
        metrics, status = run_reporting_errors(
            run, f"interrupted; rerun with --resume --output_dir {cfg.output_dir} to continue")
    finally:
        if status == EXIT_ERROR:  # a failed start leaves nothing; an interrupt keeps the folder its message names
            for folder, before in claimed:
                release_unused_run_dir(folder, before)
    if status:
        return status
    print(metrics["test"]["table"])
    print(f"\nwrote {metrics.get('output_dir', cfg.output_dir)}/metrics.json, predictions.npz, results.csv and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
