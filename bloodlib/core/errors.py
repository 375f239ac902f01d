"""One base class for every error a user can fix: the CLI prints its message, not a traceback.

Anything that is not a :class:`BloodlibError` (or an ``OSError`` about a user's path) is a
bug in bloodlib, and the CLI shows its traceback.
"""

from __future__ import annotations


class BloodlibError(Exception):
    """A user-facing error: the message says what went wrong and how to fix it."""

    #: Exit code of the CLI: 2 = bad input or arguments, 1 = the work itself failed.
    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UnsafeModelError(BloodlibError):
    """A model file that could execute code on load, or that does not match its sidecar."""


class OutputPathError(BloodlibError):
    """An output path that would overwrite an input, or that cannot be written."""


class RunLockedError(BloodlibError):
    """Another live process holds the run folder."""

    exit_code = 3
