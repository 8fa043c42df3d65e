"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class StepdpoError(Exception):
    """Base class for every error that should reach the user as one clear line."""


class InputError(StepdpoError):
    """Bad input data: names the file, the line (1-based, when there is one) and the field."""

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path + (f":{line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class ConfigError(StepdpoError):
    """A configuration file or option that cannot be used."""


class ModelLoadError(StepdpoError):
    """A model that cannot be found or loaded (missing path, hub unreachable, ...)."""
