"""The one-machine command, ``asyncfetch [OPTIONS] [INPUT]...``: options and INPUTs to a :class:`Plan`."""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from asyncfetch._version import __version__
from asyncfetch.cli import params as p
from asyncfetch.cli.status import PROG, UsageError

if TYPE_CHECKING:
    from asyncfetch.source import Input

# `example.com`, `example.com:8080/x`, `localhost:3000`: a host name, an optional port and path.
_BARE_HOST = re.compile(r"^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:\d+)?([/?#].*)?$")
# Names that are files by their look: a missing one is a missing file, never a host to fetch.
_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".gz", ".lst", ".list", ".log")


def as_input(arg: str) -> Input:
    """What one INPUT argument is: ``-``, an existing file, a URL (curl-style), else a file to complain about.

    A URL is anything with a scheme (``https://...``), or a bare host (``example.com/x``,
    ``localhost:8080``) when no file of that name exists and it does not end like a list file
    (``.txt``, ``.csv``, ...): a mistyped ``urls.txt`` is reported as missing, not fetched.
    """
    from asyncfetch.source import STDIN, RequestArgument

    if arg == STDIN or os.path.exists(arg):
        return arg
    if "://" in arg:
        return RequestArgument(arg)
    if _BARE_HOST.match(arg) and not arg.lower().endswith(_FILE_SUFFIXES):
        return RequestArgument(arg)
    return arg


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit(0)


_VERSION: Any = (
    Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ],
    False,
)


@p.command(
    (*p.FETCH_OPTIONS, *p.DISPLAY_OPTIONS),
    extra={
        "inputs": p.inputs_argument("Request files, URLs; - or none: standard input."),
        "version": _VERSION,
    },
)
def fetch_command(values: p.Values, *, inputs: list[str] | None, version: bool) -> int:
    """Fetch every request of the INPUTs concurrently; one JSON record per request on stdout."""
    del version  # answered by its callback
    # The engine (httpx, asyncio) is imported here, not with the module: --help never loads it.
    from asyncfetch.cli.runner import Plan, execute
    from asyncfetch.source import InputError, check_inputs
    from asyncfetch.spec import SpecBuilder

    given = [as_input(arg) for arg in inputs or []]
    # No INPUT at all and a terminal on stdin: never wait silently. An explicit `-` is a request
    # to read the terminal, and is honoured.
    if not given and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("no INPUT given and standard input is a terminal")
    output = values.pop("output")
    if values["resume"] and output is None:
        raise UsageError("--resume needs --output FILE")
    if values["csv"] and values["tsv"]:
        raise UsageError("--csv and --tsv: choose one")
    summary_json = p.summary_json_path(values)
    options = values.options()
    try:
        SpecBuilder(options)  # checks the -H headers against the defaults
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        check_inputs(given)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    shown = p.display_choice(values, records_on_stdout=output is None)
    return execute(
        Plan(
            inputs=given,
            options=options,
            output=output,
            resume=values["resume"],
            fail=values["fail"],
            progress=shown.progress,
            summary=shown.summary,
            warnings=shown.warnings,
            argv=p.current_argv(),
            input_format="csv" if values["csv"] else "tsv" if values["tsv"] else None,
            url_column=values["url_column"],
            summary_json=summary_json,
        )
    )
