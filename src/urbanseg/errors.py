"""The errors a user can cause, with one base class the CLI turns into a one-line message.

Each message starts with what to fix: the file (`path: ...`) or the config key (`data.crop: ...`),
then says what was expected. Anything that is not an `UrbansegError` is a bug in urbanseg and
keeps its traceback. `ConfigError` and `DataError` are also `ValueError`s, so code written
against the older plain-ValueError contract keeps working.
"""
from __future__ import annotations


class UrbansegError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(UrbansegError, ValueError):
    """A configuration or argument problem; the message starts with the dotted key or option."""


class DataError(UrbansegError, ValueError):
    """A problem with a user's data file; the message names the file."""


class CheckpointError(UrbansegError):
    """A checkpoint that cannot be read, written or resumed; the message names the file."""


class TrainingError(UrbansegError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what was kept."""


class OutputError(UrbansegError):
    """A result could not be written (disk full, no permission); the message names the file."""
