"""One base for every error emocache reports to people, each kind carrying the CLI's exit code.

The commands (emocache/cli.py) map them in one place: the message is printed without a traceback and the
process exits with `exit_code`. Built-in bases (ValueError, FileNotFoundError, ...) stay as second parents,
so library users who catch those keep working.
"""
from __future__ import annotations

from typing import ClassVar


class EmocacheError(Exception):
    """Something the user can fix: bad params or input, a missing file or weight, a full disk."""
    exit_code: ClassVar[int] = 1


class UsageError(EmocacheError):
    """Bad params, an unknown name, a command used wrongly."""
    exit_code = 2


class UnknownNameError(UsageError, LookupError):
    """A dataset, extractor, experiment or model name that is not defined; the message lists the known ones."""


class InputError(EmocacheError):
    """Data that cannot be used as given (a clip table, media file, store content, checkpoint)."""
    exit_code = 1


class WeightsError(EmocacheError):
    """A weight file is missing or is not the pinned one."""
    exit_code = 3


class StorageError(EmocacheError):
    """Writing the cache failed (disk full, permissions): committed clips are intact, a rerun resumes."""
    exit_code = 4
