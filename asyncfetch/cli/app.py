"""The typer surface of ``asyncfetch``: options in, a validated :class:`Plan` out, then the run.

Every option can also come from ``ASYNCFETCH_<OPTION>`` (``ASYNCFETCH_CONCURRENCY=200``,
``ASYNCFETCH_FAIL=1``); ``ASYNCFETCH_HEADER`` takes one header per line. Usage errors are
reported in at most three lines, with nothing fetched and no file touched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from asyncfetch._version import __version__
from asyncfetch.cli import params as p
from asyncfetch.cli.runner import ExitStatus, Plan, execute
from asyncfetch.options import MAX_CONCURRENCY, FetchOptions, parse_header, parse_size
from asyncfetch.source import STDIN, InputError, check_inputs
from asyncfetch.spec import SpecBuilder

PROG = "asyncfetch"
USAGE = f"Usage: {PROG} [OPTIONS] [INPUT]..."
HINT = f"Try '{PROG} --help' for help."


class _FetchUnlessNamed(TyperGroup):
    """``asyncfetch [OPTIONS] [INPUT]...`` means ``asyncfetch fetch ...``: the one-liner stays as it
    is, and the queue commands (``enqueue``, ``work``, ``collect``, ``status``) are named first.
    A file named like a command is read with ``asyncfetch fetch FILE`` or ``./FILE``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # `asyncfetch --help` too: the options people look for are fetch's; its help lists the others.
        if not args or (args[0] not in self.commands and args[0] not in _COMPLETION_OPTIONS):
            args = ["fetch", *args]
        return super().parse_args(ctx, args)


_COMPLETION_OPTIONS = frozenset({"--install-completion", "--show-completion"})

app = typer.Typer(
    cls=_FetchUnlessNamed,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Fetch many URLs concurrently; one JSON record per request on stdout.\n\n"
        "asyncfetch [OPTIONS] [INPUT]... is 'asyncfetch fetch': see 'asyncfetch fetch --help' for its options. "
        "The other commands spread one fetch over many machines through Redis."
    ),
    subcommand_metavar="[INPUT]... | COMMAND [ARGS]...",
)


class UsageError(Exception):
    """A problem with how asyncfetch was called: exit 2, a short message, nothing fetched."""


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit(0)


@app.command(
    "fetch",
    help=(
        "Fetch every URL (or JSON request object) of INPUT concurrently and write one JSON record "
        "per request to stdout. INPUT is a file; '-' or none reads standard input. "
        "This is what asyncfetch does when no command is named."
    ),
    epilog=(
        "Across many machines, through Redis: asyncfetch enqueue (put requests on a queue), "
        "asyncfetch work (fetch them, on each machine), asyncfetch collect (the records, exactly once), "
        "asyncfetch status (the queue's state). See asyncfetch COMMAND --help. "
        "Shell completion: asyncfetch --install-completion."
    ),
)
def fetch_command(
    inputs: p.Inputs = None,
    concurrency: p.Concurrency = 50,
    per_host: p.PerHost = 0,
    rate: p.Rate = None,
    timeout: p.Timeout = 10.0,
    connect_timeout: p.ConnectTimeout = None,
    retries: p.Retries = 2,
    max_retry_wait: p.MaxRetryWait = 60.0,
    follow: p.Follow = True,
    max_redirects: p.MaxRedirects = 10,
    method: p.Method = None,
    header: p.Header = None,
    data: p.Data = None,
    user_agent: p.UserAgent = p.DEFAULT_UA,
    http2: p.Http2 = False,
    proxy: p.Proxy = None,
    insecure: p.Insecure = False,
    max_size: p.MaxSize = "100M",
    headers: p.Headers = False,
    body: p.Body = False,
    save: p.Save = None,
    output: p.Output = None,
    resume: p.Resume = False,
    dedupe: p.Dedupe = False,
    ordered: p.Ordered = False,
    fail: p.Fail = False,
    progress: p.Progress = None,
    summary: p.Summary = None,
    quiet: p.Quiet = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> int:
    paths = list(inputs or [])
    require_input(paths)
    if resume and output is None:
        raise UsageError("--resume needs --output FILE")
    options = build_options(
        concurrency=concurrency,
        per_host=per_host,
        rate=rate,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        max_retry_wait=max_retry_wait,
        follow=follow,
        max_redirects=max_redirects,
        method=method,
        header=header,
        data=data,
        user_agent=user_agent,
        http2=http2,
        proxy=proxy,
        insecure=insecure,
        max_size=max_size,
        include_headers=headers,
        include_body=body,
        save_dir=save,
        dedupe=dedupe,
        ordered=ordered,
    )
    require_readable(paths)
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    shown = p.display_choice(progress=progress, summary=summary, quiet=quiet, records_on_stdout=output is None)
    plan = Plan(
        inputs=paths,
        options=options,
        output=output,
        resume=resume,
        fail=fail,
        progress=shown.progress,
        summary=shown.summary,
    )
    return execute(plan)


def require_input(paths: list[str]) -> None:
    """A usage error when standard input is to be read but is a terminal (never wait on one)."""
    if (not paths or STDIN in paths) and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("no INPUT given and standard input is a terminal")


def require_readable(paths: list[str]) -> None:
    """A usage error naming the first INPUT that cannot be read."""
    try:
        check_inputs(paths)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def build_options(
    *,
    header: list[str] | None = None,
    data: str | None = None,
    max_size: str = "100M",
    method: str | None = None,
    **values: Any,
) -> FetchOptions:
    """FetchOptions from command-line values (sizes, ``-d @FILE``, ``-H`` texts), or a UsageError."""
    concurrency = values.get("concurrency", 1)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}")
    save = values.get("save_dir")
    if save is not None and save.exists() and not save.is_dir():
        raise UsageError(f"--save {save}: not a directory")
    try:
        options = FetchOptions(
            method=method.upper() if method else None,
            headers=tuple(parse_header(text) for text in (header or env_lines(p.env("HEADER")))),
            data=_read_data(data),
            max_size=parse_size(max_size),
            **values,
        )
        SpecBuilder(options)  # validates the -H headers against the defaults
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options


def env_lines(name: str) -> list[str]:
    """The non-blank lines of an environment variable (``ASYNCFETCH_HEADER``: one header each)."""
    return [line for line in os.environ.get(name, "").splitlines() if line.strip()]


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data.startswith("@"):
        path = data[1:]
        try:
            if path == STDIN:
                raise ValueError("-d @- is not supported: standard input carries the requests")
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read --data file {path}: {exc.strerror or exc}") from None
    return data.encode("utf-8")


def run(args: list[str]) -> int:
    """Run the command on ``args``; returns the exit status (usage errors are printed here)."""
    from asyncfetch.cli import dist  # noqa: F401  (registers the queue commands on the app)

    cli = typer.main.get_command(app)
    try:
        status = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except UsageError as exc:
        return _usage_error(str(exc))
    except Exception as exc:
        # typer's (vendored click) usage errors: unknown option, bad value, missing argument.
        formatter = getattr(exc, "format_message", None)
        if callable(formatter) and hasattr(exc, "exit_code"):
            return _usage_error(str(formatter()))
        raise
    return int(status) if isinstance(status, int) else ExitStatus.OK


def _usage_error(message: str) -> int:
    sys.stderr.write(f"{USAGE}\n{HINT}\n{PROG}: error: {message.splitlines()[0] if message else 'bad usage'}\n")
    return ExitStatus.USAGE
