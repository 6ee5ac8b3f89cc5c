"""``load_data``: one entry point for named, generated and file data sets, with cleaning and checks."""

from __future__ import annotations

import os

from .csd import read_csd
from .errors import DataError
from .mmsa import read_mmsa
from .mult import read_mult
from .safe_pickle import load_pickle
from .synthetic import make_synthetic
from .types import SPLITS, MultimodalData
from .validate import check_data, clean_nonfinite

FORMATS = ("auto", "mmsa", "mult", "csd")
DATASETS = ("synthetic", "mosi", "mosei")


def detect_format(obj: object, path: str) -> str:
    """'mmsa' when the splits hold 'regression_labels', 'mult' when they hold 'labels'."""
    if isinstance(obj, dict) and all(isinstance(obj.get(s), dict) for s in SPLITS):
        keys = set(obj["train"])
        if "regression_labels" in keys:
            return "mmsa"
        if "labels" in keys:
            return "mult"
        raise DataError(f"{path} [split 'train']: neither 'regression_labels' (MMSA) nor 'labels' (MulT) "
                        f"found (keys: {sorted(map(str, keys))})")
    if isinstance(obj, dict):
        missing = [s for s in SPLITS if not isinstance(obj.get(s), dict)]
        raise DataError(f"{path}: missing split '{missing[0]}' (top-level keys: {sorted(map(str, obj))})")
    raise DataError(f"{path}: not an MMSA or MulT pickle (top level is {type(obj).__name__}, not a dict of splits)")


def load_data(dataset: str = "synthetic", data_path: str | None = None, data_format: str = "auto",
              synthetic_seed: int = 0, nan_policy: str = "error") -> MultimodalData:
    """Load, clean and check a data set.

    data_path None: 'synthetic' generates the embedded set; 'mosi'/'mosei' need a path (no download
    offline). Otherwise data_path is an MMSA/MulT pickle or a folder of .csd files. -inf becomes 0
    (logged); NaN/+inf follow ``nan_policy``. Every problem raises DataError.
    """
    if data_format not in FORMATS:
        raise DataError(f"unknown data format {data_format!r}; expected one of {FORMATS}")
    if data_path is None:
        if dataset == "synthetic":
            data = make_synthetic(seed=synthetic_seed)
        elif dataset in ("mosi", "mosei"):
            raise DataError(f"no --data_path given for '{dataset}': this project cannot download data sets "
                            "(no internet); pass --data_path PATH to an MMSA/MulT pickle or a .csd folder")
        else:
            raise DataError(f"unknown data set {dataset!r}; expected one of {DATASETS}")
    else:
        path = os.fspath(data_path)
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or folder")
        name = dataset if dataset in ("mosi", "mosei") else os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        fmt = data_format
        if fmt == "auto" and os.path.isdir(path):
            fmt = "csd"
        if fmt == "csd":
            data = read_csd(path, name)
        else:
            obj = load_pickle(path)
            if fmt == "auto":
                fmt = detect_format(obj, path)
            data = read_mmsa(obj, path, name) if fmt == "mmsa" else read_mult(obj, path, name)
    label_key = {"mmsa": "regression_labels"}.get(data.format, "labels")
    check_data(data, label_key)
    clean_nonfinite(data, nan_policy)
    return data
