"""The one error type of sharing: a message a user can act on, one line."""

from __future__ import annotations


class SharingError(ValueError):
    """An adapter cannot be written, read or uploaded; the message names what and the fix."""


__all__ = ["SharingError"]
