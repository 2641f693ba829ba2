"""The typer surface of ``asyncfetch``: options in, a validated :class:`Plan` out, then the run.

Every option can also come from ``ASYNCFETCH_<OPTION>`` (``ASYNCFETCH_CONCURRENCY=200``,
``ASYNCFETCH_FAIL=1``); ``ASYNCFETCH_HEADER`` takes one header per line. Usage errors are
reported in at most three lines, with nothing fetched and no file touched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from asyncfetch._version import __version__
from asyncfetch.cli.runner import ExitStatus, Plan, execute
from asyncfetch.options import DEFAULT_USER_AGENT, MAX_CONCURRENCY, FetchOptions, parse_header, parse_size
from asyncfetch.source import STDIN, InputError, check_inputs
from asyncfetch.spec import SpecBuilder

PROG = "asyncfetch"
USAGE = f"Usage: {PROG} [OPTIONS] [INPUT]..."
HINT = f"Try '{PROG} --help' for help."

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class UsageError(Exception):
    """A problem with how asyncfetch was called: exit 2, a short message, nothing fetched."""


def _env(name: str) -> str:
    return f"ASYNCFETCH_{name}"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit(0)


@app.command(
    help=(
        "Fetch every URL (or JSON request object) of INPUT concurrently and write one JSON record "
        "per request to stdout. INPUT is a file; '-' or none reads standard input."
    ),
    no_args_is_help=False,
)
def command(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(metavar="INPUT", show_default=False, help="Request files; - is standard input."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", envvar=_env("CONCURRENCY"), help="Requests in flight at once.")
    ] = 50,
    per_host: Annotated[
        int, typer.Option("--per-host", envvar=_env("PER_HOST"), help="At most N in flight to one host (0: no limit).")
    ] = 0,
    rate: Annotated[
        float | None, typer.Option("--rate", envvar=_env("RATE"), help="At most R request starts per second overall.")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", "-t", envvar=_env("TIMEOUT"), help="Deadline of one attempt, body included (s)."),
    ] = 10.0,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            "--connect-timeout",
            envvar=_env("CONNECT_TIMEOUT"),
            help="Deadline to connect (s); default: the smaller of 10 and -t.",
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", "-r", envvar=_env("RETRIES"), help="Retries after a transient failure.")
    ] = 2,
    max_retry_wait: Annotated[
        float, typer.Option("--max-retry-wait", envvar=_env("MAX_RETRY_WAIT"), help="Longest wait before a retry (s).")
    ] = 60.0,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", envvar=_env("FOLLOW"), help="Follow redirects.")
    ] = True,
    max_redirects: Annotated[
        int, typer.Option("--max-redirects", envvar=_env("MAX_REDIRECTS"), help="Most redirects followed.")
    ] = 10,
    method: Annotated[
        str | None,
        typer.Option(
            "--method", "-X", envvar=_env("METHOD"), help="Method for URL lines; default: GET, or POST with -d."
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="'Name: value' added to every request (repeatable).", show_default=False),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", envvar=_env("DATA"), help="Body for URL lines; @FILE reads FILE.")
    ] = None,
    user_agent: Annotated[
        str, typer.Option("--user-agent", "-A", envvar=_env("USER_AGENT"), help="User-Agent header.")
    ] = DEFAULT_USER_AGENT,
    http2: Annotated[
        bool, typer.Option("--http2", envvar=_env("HTTP2"), help="Negotiate HTTP/2 where the server offers it.")
    ] = False,
    proxy: Annotated[
        str | None,
        typer.Option("--proxy", envvar=_env("PROXY"), help="Proxy for every request; default: the *_PROXY variables."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", "-k", envvar=_env("INSECURE"), help="Do not verify TLS certificates.")
    ] = False,
    max_size: Annotated[
        str,
        typer.Option("--max-size", envvar=_env("MAX_SIZE"), help="Largest body (after decoding): K, M, G suffixes."),
    ] = "100M",
    headers: Annotated[
        bool, typer.Option("--headers", envvar=_env("HEADERS"), help="Add the response headers to each record.")
    ] = False,
    body: Annotated[
        bool, typer.Option("--body", envvar=_env("BODY"), help="Add the response body to each record.")
    ] = False,
    save: Annotated[
        Path | None, typer.Option("--save", envvar=_env("SAVE"), help="Write each complete body to a file in DIR.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", envvar=_env("OUTPUT"), help="Write records to FILE, not stdout.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", envvar=_env("RESUME"), help="With -o: skip requests FILE already records.")
    ] = False,
    dedupe: Annotated[
        bool, typer.Option("--dedupe", envvar=_env("DEDUPE"), help="Fetch each distinct URL once.")
    ] = False,
    ordered: Annotated[
        bool, typer.Option("--ordered", envvar=_env("ORDERED"), help="Write records in input order.")
    ] = False,
    fail: Annotated[
        bool, typer.Option("--fail", envvar=_env("FAIL"), help="Exit 1 when a status is 400 or more, too.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            envvar=_env("PROGRESS"),
            help="Live progress bar on stderr; default: on when stderr is a terminal.",
        ),
    ] = None,
    summary: Annotated[
        bool | None,
        typer.Option(
            "--summary/--no-summary",
            envvar=_env("SUMMARY"),
            help="Closing summary on stderr; default: on when stderr is a terminal.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", envvar=_env("QUIET"), help="Neither progress nor summary.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> int:
    paths = list(inputs or [])
    if (not paths or STDIN in paths) and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("no INPUT given and standard input is a terminal")
    if resume and output is None:
        raise UsageError("--resume needs --output FILE")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}")
    header_texts = header if header else _env_lines(_env("HEADER"))
    try:
        options = FetchOptions(
            concurrency=concurrency,
            per_host=per_host,
            rate=rate,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retries=retries,
            max_retry_wait=max_retry_wait,
            follow=follow,
            max_redirects=max_redirects,
            method=method.upper() if method else None,
            headers=tuple(parse_header(text) for text in header_texts),
            data=_read_data(data),
            user_agent=user_agent,
            http2=http2,
            proxy=proxy,
            insecure=insecure,
            max_size=parse_size(max_size),
            include_headers=headers,
            include_body=body,
            save_dir=save,
            dedupe=dedupe,
            ordered=ordered,
        )
        SpecBuilder(options)  # validates the -H headers against the defaults
        check_inputs(paths)
    except (ValueError, InputError) as exc:
        raise UsageError(str(exc)) from None
    if save is not None and save.exists() and not save.is_dir():
        raise UsageError(f"--save {save}: not a directory")
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    stderr_tty = sys.stderr is not None and sys.stderr.isatty()
    plan = Plan(
        inputs=paths,
        options=options,
        output=output,
        resume=resume,
        fail=fail,
        progress=not quiet and (stderr_tty if progress is None else progress),
        summary=not quiet and (stderr_tty if summary is None else summary),
    )
    return execute(plan)


def _env_lines(name: str) -> list[str]:
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
