"""``python -m datasets PATH_OR_NAME``: summary of a data set, or a one-line error on a bad file."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from .errors import DataError
from .load import DATASETS, FORMATS, load_data
from .types import MODALITIES, MultimodalData


def summary(data: MultimodalData) -> str:
    lines = [f"data set: {data.name}", f"format:   {data.format}", f"source:   {data.source}",
             "dims:     " + ", ".join(f"{m} {d}" for m, d in data.dims.items())]
    bins = np.arange(-3, 4)
    for s, split in data.splits.items():
        lens = ", ".join(f"{m} max {split.lengths[:, j].max()} mean {split.lengths[:, j].mean():.1f}"
                         for j, m in enumerate(MODALITIES))
        shapes = ", ".join(f"{m} {tuple(split.features(m).shape)}" for m in MODALITIES)
        hist = np.bincount(np.round(np.clip(split.labels, -3, 3)).astype(int) + 3, minlength=7)
        lines.append(f"{s:<5} n={split.n}: {shapes}")
        lines.append(f"      lengths: {lens}")
        lines.append("      labels: " + " ".join(f"{b:+d}:{c}" for b, c in zip(bins, hist))
                     + f" (zero {int((split.labels == 0).sum())}, positive {int((split.labels > 0).sum())})")
        lines.append(f"      ids unique: {len(set(split.ids.tolist())) == split.n}")
    all_ids = [i for sp in data.splits.values() for i in sp.ids.tolist()]
    lines.append(f"ids unique across splits: {len(set(all_ids)) == len(all_ids)}")
    lines += [f"note: {n}" for n in data.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    parser.add_argument("path_or_name", help=f"a pickle, a .csd folder, or one of {DATASETS}")
    parser.add_argument("--data_format", default="auto", choices=FORMATS)
    parser.add_argument("--nan_policy", default="error", choices=["error", "zero"])
    parser.add_argument("--synthetic_seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.path_or_name.strip():
        parser.error("the path is empty; give a pickle, a .csd folder or a data set name")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    target = args.path_or_name
    is_name = target in DATASETS and not os.path.exists(target)
    if is_name and target != "synthetic":  # the loader's message names the training CLI's --data_path
        print(f"error: {target}: this project cannot download data sets (no internet); give the path of its "
              "MMSA/MulT pickle or .csd folder instead of the name", file=sys.stderr)
        return 1
    try:
        data = load_data(dataset=target if is_name else "synthetic", data_path=None if is_name else target,
                         data_format=args.data_format, synthetic_seed=args.synthetic_seed,
                         nan_policy=args.nan_policy)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, MemoryError) as err:
        print(f"error: {target}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(summary(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
