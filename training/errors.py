"""What the user must fix, as opposed to a bug in the code.

Every error a user can cause (a bad flag, an unreadable file, a broken checkpoint, an output folder
that cannot be written) derives from ``UserError``; the command lines print such an error as one
line. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """Something the user must fix; the message names the problem and what to do."""


class ConfigError(UserError, ValueError):
    """A setting out of its range, or settings that do not fit together."""


class OutputError(UserError):
    """An output path that cannot be written (not a folder, read-only, disk full, locked)."""


def _advice(err: OSError, flag: str) -> str:
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return f"free some disk space, or choose another {flag} on a disk with room"
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return f"choose an {flag} you can write to"
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return f"a file stands where a folder is needed; choose another {flag}"
    return f"check the path, or choose another {flag}"


@contextlib.contextmanager
def writing(path: str | Path, flag: str = "--output_dir") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a one-line ``OutputError`` whose advice
    names ``flag``, the option that chose the place."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; {_advice(err, flag)}") from err
