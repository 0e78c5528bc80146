"""Exceptions of the data pipeline.

Both derive from ValueError so callers that already catch bad-value errors keep working;
messages are one line that names the file (and line) and says how to fix it.
"""

from __future__ import annotations


class DataError(ValueError):
    """A list file, a dataset layout or a data option is wrong."""


class VideoDecodeError(DataError):
    """A video file is missing, empty or cannot be decoded."""
