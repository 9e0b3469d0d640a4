"""One error type for everything a user can get wrong.

The CLI prints `KdlibError` as a single line (no traceback) and exits with status 2, so
every message must name the offending file or value *and* say what to do about it.
"""
from __future__ import annotations

from pathlib import Path


class KdlibError(Exception):
    """A user-facing error: bad input, missing data, inconsistent configuration."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.fix = fix
        text = message if path is None else f"{path}: {message}"
        if fix:
            text = f"{text} -- {fix}"
        super().__init__(text)


class DataError(KdlibError):
    """Input data is missing, corrupt or malformed."""


class ConfigError(KdlibError):
    """A configuration or parameter value is invalid."""


class KdlibWarning(UserWarning):
    """Something kdlib did to the input that the user should know about (e.g. colour
    slices flattened to grey); the CLI prints it as one `kdlib: warning:` line."""
