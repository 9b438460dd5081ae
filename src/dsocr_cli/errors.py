"""One exception tree, each class carrying the exit code the command line returns for it.

The exit codes are part of the public interface (README, `--help`) and stay stable.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What `dsocr` returns. Modelled on OCRmyPDF's table."""

    OK = 0  # every input done (or skipped as already done)
    FAILED_INPUTS = 1  # some inputs failed; the others are done
    USAGE = 2  # bad flags or arguments (Typer's own code too)
    NO_INPUT = 3  # no usable input was found at all
    SETUP = 4  # model, device or output folder unusable: nothing was processed
    INTERNAL = 5  # a bug in dsocr or a library: rerun with --verbose for the traceback
    LOCKED = 6  # another dsocr run is writing to the same output folder
    INTERRUPTED = 130  # SIGINT/SIGTERM; what finished is kept


class DsocrError(Exception):
    """Base of every error dsocr reports as one line; `hint` says how to fix it."""

    exit_code = ExitCode.SETUP

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """Message and hint as one line; a message that already ends a sentence gets no second full stop."""
        if not self.hint:
            return self.message
        return f"{self.message}{' ' if self.message.endswith(('.', '!', '?')) else '. '}{self.hint}"


class UsageError(DsocrError):
    """Bad flags or arguments, found before any work: exit 2, the code Typer gives its own usage errors."""

    exit_code = ExitCode.USAGE


class NoInputError(DsocrError):
    """Nothing to process at all: every argument rejected, or a report folder without any record."""

    exit_code = ExitCode.NO_INPUT


class SetupError(DsocrError):
    """The run cannot start: model, device, dependencies or output folder."""

    exit_code = ExitCode.SETUP


class LockedError(DsocrError):
    """Another run holds OUT's lock (writers/lock.py) and --wait was not given."""

    exit_code = ExitCode.LOCKED


class InputError(DsocrError):
    """One input cannot be read; the run records it and goes on."""

    exit_code = ExitCode.FAILED_INPUTS

    def __init__(self, message: str, reason: str = "unreadable", hint: str | None = None):
        super().__init__(message, hint)
        self.reason = reason


def show_path(path) -> str:
    """A path printable on one line: newlines and undecodable bytes escaped."""
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return repr(text)[1:-1]
