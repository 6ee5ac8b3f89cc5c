"""Loading pickles without executing code.

A pickle can name any importable callable and have it called while loading (``os.system``,
``builtins.open``, ...). ``load_pickle`` uses an Unpickler whose ``find_class`` hands out only what
numpy arrays and builtin containers need and refuses everything else before it is called.
"""

from __future__ import annotations

import builtins
import codecs
import logging
import os
import pickle

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy._core.multiarray._reconstruct
_SCALAR = np.float32(0).__reduce__()[0]  # numpy._core.multiarray.scalar
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy._core.numeric._frombuffer (pickle protocol 5)

# (module, name) -> the object it stands for. numpy 1.x pickles say numpy.core, numpy 2.x numpy._core;
# python 2 pickles say __builtin__ and copy_reg.
ALLOWED: dict[tuple[str, str], object] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED[(_mod, "_reconstruct")] = _RECONSTRUCT
    ALLOWED[(_mod, "scalar")] = _SCALAR
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED[(_mod, "_frombuffer")] = _FROMBUFFER
ALLOWED[("numpy", "ndarray")] = np.ndarray
ALLOWED[("numpy", "dtype")] = np.dtype
ALLOWED[("_codecs", "encode")] = codecs.encode  # python-2 protocol numpy pickles encode raw bytes with it
for _name in ("list", "dict", "set", "frozenset", "tuple", "bytearray", "bytes", "str", "int", "float",
              "bool", "complex", "slice"):
    for _mod in ("builtins", "__builtin__"):
        ALLOWED[(_mod, _name)] = getattr(builtins, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the names in ALLOWED."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        obj = ALLOWED.get((module, name))
        if obj is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.path}: only numpy arrays "
                            "and builtin containers are allowed")
        return obj


def load_pickle(path: str | os.PathLike) -> object:
    """Load a pickle of numpy arrays and builtin containers; anything else raises DataError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a pickle file (use --data_format csd for .csd folders)")
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":  # torch.save's zip (a checkpoint?), numpy's .npz
                raise DataError(f"{path}: a zip archive (torch.save or numpy .npz), not a pickle of features; give "
                                "an MMSA or MulT pickle or a folder of .csd files")
            fh.seek(0)
            return RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:200]  # one line
        raise DataError(f"{path}: unreadable or truncated pickle ({type(err).__name__}: {reason})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None
