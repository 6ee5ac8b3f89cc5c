"""Every report: one run's table, files and figures (``run_report.write_report``, called by
training) and the comparison of several runs (``python -m report OUT_A OUT_B ... --output DIR``).

One concept per file: ``tables`` (the printed table, results.csv rows), ``plots`` (the figures),
``run_report`` (everything a run writes), ``compare`` (several runs).
"""

from .compare import ReportError, auilc, compare, load_run
from .run_report import write_report

__all__ = ["ReportError", "auilc", "compare", "load_run", "write_report"]
