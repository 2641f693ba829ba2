"""How a command ends: the exit statuses, the errors that map to them, and the one error printer.

Commands do not write ``asyncfetch: error:`` lines nor pick numbers themselves: they return
:func:`outcome_status` for a finished run, or raise a :class:`CommandError`, which
:func:`report` prints (one line, or usage plus one line) and turns into its status.
"""

from __future__ import annotations

import sys
from enum import IntEnum

PROG = "asyncfetch"
FETCH_USAGE = "[OPTIONS] [INPUT]..."


class ExitStatus(IntEnum):
    """How the process ends."""

    OK = 0  # every request got an HTTP response (with --fail: every status < 400)
    FAILURES = 1  # at least one error record (with --fail: or a status >= 400), or records not written
    USAGE = 2  # bad options or unreadable INPUT: nothing fetched
    INTERRUPTED = 130  # 128 + SIGINT: stopped on SIGINT or SIGTERM
    PIPE_CLOSED = 141  # 128 + SIGPIPE: the reader of stdout went away


class UsageError(Exception):
    """A problem with how asyncfetch was called: exit 2, a short message, nothing fetched."""


class CommandError(Exception):
    """A failure of the command itself (not of one request): a one-line message and a status."""

    status = ExitStatus.FAILURES


class InputFailure(CommandError):
    """An INPUT that became unreadable midway: like a usage error, but after fetching began."""

    status = ExitStatus.USAGE


def outcome_status(*, failed: int, http_errors: int, fail: bool, interrupted: bool = False) -> ExitStatus:
    """The status of a run that ended: interrupted, else 1 for any failure, else 0."""
    if interrupted:
        return ExitStatus.INTERRUPTED
    if failed or (fail and http_errors):
        return ExitStatus.FAILURES
    return ExitStatus.OK


def report(error: BaseException, *, command: str | None = None) -> ExitStatus:
    """Print ``error`` the one way errors are printed, and return the status it ends with.

    A usage error gets the usage of ``command`` (None: the one-liner) and a pointer to its help:
    three lines in all.
    """
    message = str(error).strip().splitlines()
    text = message[0] if message else type(error).__name__
    if isinstance(error, UsageError):
        usage = f"{PROG} {command} [OPTIONS]" if command else f"{PROG} {FETCH_USAGE}"
        helping = f"{PROG} {command} --help" if command else f"{PROG} --help"
        sys.stderr.write(f"Usage: {usage}\nTry '{helping}' for help.\n{PROG}: error: {text}\n")
        return ExitStatus.USAGE
    sys.stderr.write(f"{PROG}: error: {text}\n")
    return error.status if isinstance(error, CommandError) else ExitStatus.FAILURES


def warn(text: str) -> None:
    """A warning line on stderr (callers skip it under ``--quiet``)."""
    sys.stderr.write(f"{PROG}: warning: {text}\n")
