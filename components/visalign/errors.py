"""The failures a user can act on, apart from programming errors.

A StageError's message names what went wrong (the file, row and field; the URI; the server) and
says what to do. The `visalign` command prints it and exits 2, without a traceback (`--debug`
shows one); anything else is a bug and keeps its traceback. This module imports nothing, so every
layer can raise these.
"""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot go on, for a reason its message names: bad input, an outage, nothing left to do."""


class InputError(StageError, ValueError):
    """A file the user gave is unusable as a whole (not UTF-8, not JSON, wrong format); the message
    names the file and, where it can, the row, field or byte offset."""

    def __init__(self, file: str, problem: str):
        self.file, self.problem = str(file), problem
        super().__init__(f"{file}: {problem}")


class EmptyResult(StageError):
    """A stage ended with no rows out: every input row was dropped (the reasons are in its report)."""


class ResumeMismatch(StageError):
    """The output holds work from a run with another model, data or parameters."""
