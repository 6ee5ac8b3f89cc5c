"""Comparison of several runs: ``python -m report OUT_A OUT_B ... --output DIR [--names A B ...]``."""

from .compare import ReportError, auilc, compare, load_run

__all__ = ["ReportError", "auilc", "compare", "load_run"]
