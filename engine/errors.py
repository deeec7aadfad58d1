"""The one family of errors a user can cause: a bad option, a missing or damaged file, a store in the wrong state.

Every such error derives from `MemscoreError`; the `memscore` command prints it as one line and exits 2, and
anything else is a bug (a traceback). Option and value errors are also `ValueError`s, so callers of the Python API
that catch `ValueError` keep working.
"""
from __future__ import annotations


class MemscoreError(Exception):
    """Anything the user can fix; the message names the file, id or option and what to do."""


class UsageError(MemscoreError, ValueError):
    """An option or value that is not allowed (an unknown choice, a number out of range, a missing companion
    option)."""


class StoreError(MemscoreError, RuntimeError):
    """A store that cannot be used as asked (config mismatch, locked, damaged, not a memscore store)."""


class PathError(MemscoreError):
    """A path memscore will not write, replace or delete: it was not made by memscore, or it holds an input."""
