"""``python attention_robust_v4.py [flags]``: train, select on valid, sweep the test split, report.

Every error a user can cause (bad flags, unreadable data, a broken checkpoint, a non-finite
loss) ends with one clear line on stderr and a non-zero status, never a traceback
(``ATTENTION_ROBUST_DEBUG=1`` re-raises for debugging).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from training.config import config_from_args, new_run_dir

EXIT_ERROR = 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a stopped run, reported in one line."""
    from datasets import DataError
    from training.checkpoint import CheckpointError
    from training.run import RunExistsError
    from training.trainer import NonFiniteLossError

    return (DataError, CheckpointError, RunExistsError, NonFiniteLossError, FileNotFoundError,
            PermissionError, IsADirectoryError, ValueError)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    warnings.filterwarnings("ignore", message=".*TensorFloat32.*")


def run_reporting_errors(fn: Callable[[], Any], interrupted: str,
                         extra_errors: tuple[type[BaseException], ...] = ()) -> tuple[Any, int]:
    """``(fn(), 0)``; a user error prints one ``error: ...`` line instead (status 1), Ctrl-C prints
    ``interrupted`` (status 130)."""
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


def main(argv: list[str] | None = None, prog: str = "attention_robust_v4.py") -> int:
    cfg = config_from_args(argv, prog=prog)  # argparse prints the error line and exits 2 itself
    if cfg.output_dir is None:  # every run its own folder: runs/<model>_<data>_<time>, linked as runs/latest
        cfg.output_dir = new_run_dir(cfg)
    setup_logging(cfg.quiet)

    def run() -> dict:
        from training.run import evaluate_checkpoints, run_experiment

        return evaluate_checkpoints(cfg) if cfg.eval_only else run_experiment(cfg)

    metrics, status = run_reporting_errors(
        run, f"interrupted; rerun with --resume --output_dir {cfg.output_dir} to continue")
    if status:
        return status
    print(metrics["test"]["table"])
    print(f"\nwrote {cfg.output_dir}/metrics.json, predictions.npz, results.csv and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
