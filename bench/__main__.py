"""``python -m bench [NAME ...] [--quick]``: run the named benchmarks (all by default) and print figures."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from bench import BENCHMARKS, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (smoke run)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    print(f"machine: {machine()}", flush=True)
    results = {"machine": machine()}
    for name in args.names or BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        results[name] = importlib.import_module(f"bench.{name}").run(args.quick)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
