"""The library's error type: every error jaxrec raises on purpose (bad data, a bad checkpoint, a run that cannot go
on, a batch of the wrong shape, a non-finite step) is a :class:`JaxrecError`, also a subclass of the builtin error it
refines (``ValueError``, ``RuntimeError``, ...), so that ``except JaxrecError`` catches exactly the expected ones."""

from __future__ import annotations

__all__ = ["JaxrecError"]


class JaxrecError(Exception):
    """The base of every error jaxrec raises on purpose; its message says what is wrong and what to change."""
