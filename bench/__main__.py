"""``python -m bench [NAME ...] [--quick]``: run the named benchmarks (all by default) and print figures."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from bench import BENCHMARKS, check_device, machine
from training.atomic import atomic_open


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (smoke run)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda or cuda:N: where the models run in every benchmark")
    parser.add_argument("--scale", type=float, default=None,
                        help="memory: fraction of MOSEI's N to generate (default 0.05; 0.01 with --quick)")
    args = parser.parse_args(argv)
    try:
        device = check_device(args.device)
    except ValueError as err:
        print(f"python -m bench: {err}", file=sys.stderr)
        return 2
    if args.scale is not None and not 0 < args.scale <= 1:
        parser.error(f"--scale must lie in (0, 1], got {args.scale}")
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.json) if args.json else None
    if out is not None and out.exists():  # checked before the benchmarks run, not after
        parser.error(f"--json {out} already exists; give a new file (earlier figures are never written over)")
    if out is not None and not os.access(out.parent, os.W_OK):
        parser.error(f"--json {out}: cannot write into {out.parent}; give a file in a folder that exists")
    print(f"machine: {machine(device)}", flush=True)
    results = {"machine": machine(device)}
    for name in args.names or BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        kw = {"scale": args.scale} if name == "memory" else {}
        results[name] = importlib.import_module(f"bench.{name}").run(args.quick, device, **kw)
    if out is not None:
        try:
            with atomic_open(out) as fh:
                json.dump(results, fh, indent=2)
        except OSError as err:
            print(f"python -m bench: cannot write --json {out} ({err.strerror or err})", file=sys.stderr)
            return 1
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
