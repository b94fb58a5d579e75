"""User errors: the CLI prints each as one line and exits non-zero; bugs stay tracebacks."""

from __future__ import annotations


class FinSenseError(Exception):
    """Base class for every mistake a user can make (config, data, checkpoint, run directory).

    The message names the key or file at fault and says how to fix it.
    """

    exit_code: int = 2


class ConfigError(FinSenseError):
    """A config value is missing, of the wrong type or out of range."""


class DataError(FinSenseError):
    """Market data cannot be read or fails validation."""


class CheckpointError(FinSenseError):
    """A checkpoint cannot be written, read, or trusted."""


class RunLockedError(FinSenseError):
    """Another process is already writing to this run directory."""

    exit_code = 3
