"""``python -m report OUT_A OUT_B ... --output DIR [--names A B ...] [--overwrite]``.

Reads each run folder's metrics.json and writes DIR/comparison.md, comparison.csv,
comparison.png and comparison.json (and comparison_probability.csv: Brier, NLL, ECE of P(positive),
when every run reports them). Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from report.compare import AUILC_NOTE, compare
from training.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m report", description="Compare finished runs (their metrics.json) in one table and figure.",
        epilog=AUILC_NOTE + " Runs with different missing rates are compared on the common rates, with a warning.")
    parser.add_argument("runs", nargs="+", help="run folders (each holding metrics.json) or metrics.json files")
    parser.add_argument("--output", required=True, help="folder for comparison.md/.csv/.png/.json")
    parser.add_argument("--names", nargs="+", help="display names, one per run (default: folder names)")
    parser.add_argument("--overwrite", action="store_true", help="replace a comparison already in --output")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compare(args.runs, args.output, args.names, args.overwrite)
        except (UserError, OSError) as err:
            for w in caught:  # what was found before the error may explain it
                print(f"warning: {w.message}", file=sys.stderr)
            print(f"error: {err}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(result["table"])
    print(f"wrote {args.output}/comparison.md, comparison.csv, comparison.png, comparison.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
