"""Failures a stage reports in one line: what happened, which file or key, what to do.

Every exception class here (and every subclass of :class:`StageError` elsewhere) carries a
message that says everything a user needs; :func:`pipeline.cli.stage_main` prints it as one
``error:`` line and exits 1, with no traceback. Anything else is a bug and keeps its traceback.
This module imports nothing from the project: every layer may raise these.
"""

from __future__ import annotations


class StageError(RuntimeError):
    """A known failure: the message names the file (or key) and what to do about it."""


class OutputFileError(StageError, ValueError):
    """An output of an earlier stage is missing, truncated or not one this harness wrote."""


class MissingOutputError(OutputFileError, FileNotFoundError):
    """An output of an earlier stage does not exist (its stage has not run)."""


class DiskFullError(StageError):
    """No space left on the device while writing an output (nothing partial was kept)."""
