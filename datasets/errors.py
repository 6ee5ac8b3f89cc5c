"""The one error type of the data layer."""

from __future__ import annotations

from training.errors import UserError


class DataError(UserError, ValueError):
    """A data file or data set is unusable. The message names the file, split and key where relevant."""
