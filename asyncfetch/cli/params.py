"""Every command-line option, declared once: flags, help, panel, and how its value reaches the engine.

An engine option names the :class:`~asyncfetch.options.FetchOptions` field it sets; its default
and its checks are that field's (the help shows the default read from there). A command takes
its options from this table by name (:func:`command`), so ``fetch`` and ``work`` share one
declaration of each. Every option reads ``ASYNCFETCH_<NAME>`` from the environment, NAME being
its long flag in upper case with ``_`` for ``-`` (``ASYNCFETCH_PER_HOST``); ``-H`` reads
``ASYNCFETCH_HEADER``, one header per line.

Adding an option: one :class:`Param` in :data:`PARAMS`, and its name in the commands' lists.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from asyncfetch.cli.status import UsageError
from asyncfetch.options import FetchOptions, environment_proxies, format_size, parse_header, parse_size
from asyncfetch.values import Value

INPUT = "Input"
REQUEST = "Requests"
ENGINE = "Fetching"
RECORDS = "Records"
OUTPUT = "Output and exit status"
DISPLAY = "Display"
QUEUE = "Queue (Redis)"

ENV_PREFIX = "ASYNCFETCH_"

# The command line being run (without the program name), for messages that repeat it.
ARGV: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ARGV", default=())

# Given for "not on the command line": the FetchOptions default then holds.
_UNSET: Any = None
_FIELDS = {f.name: f for f in dataclasses.fields(FetchOptions)}


def env_name(flag: str) -> str:
    """The environment variable of an option, from its long flag: ``--per-host`` → ``ASYNCFETCH_PER_HOST``."""
    return ENV_PREFIX + flag.split("/", maxsplit=1)[0].lstrip("-").replace("-", "_").upper()


def current_argv() -> tuple[str, ...]:
    """The arguments of the command being run, as typed."""
    return ARGV.get()


def env_lines(name: str) -> list[str]:
    """The non-blank lines of an environment variable (``ASYNCFETCH_HEADER``: one header each)."""
    return [line for line in os.environ.get(name, "").splitlines() if line.strip()]


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Param(Value):
    """One option: its flags and help, and the FetchOptions field it sets (None: the CLI's own)."""

    name: str  # the parameter name the command receives
    flags: tuple[str, ...]
    kind: Any  # the type typer parses (bool options are flags)
    help: str
    panel: str
    field: str | None = None  # FetchOptions field; its default and checks apply
    convert: Callable[[Any], Any] | None = None  # command-line value -> field value
    default: Any = _UNSET  # CLI-only options: their default
    metavar: str | None = None
    env: str | None = ""  # "" derives it from the long flag; None: no variable
    shown_default: str | None = None  # the help's "(default: ...)" when the field's reads badly

    @property
    def is_flag(self) -> bool:
        return self.kind is bool or self.kind == (bool | None)

    def cli_default(self) -> Any:
        """What typer gets as the default: a flag's real default, else "not given"."""
        if self.field is not None and self.is_flag:
            return _FIELDS[self.field].default
        return self.default

    def default_text(self) -> str | None:
        """The default shown in the help, read from FetchOptions for engine options."""
        if self.shown_default is not None:
            return self.shown_default
        if self.field is None or self.is_flag:
            return None
        value = _FIELDS[self.field].default
        if value is None or value == () or value is dataclasses.MISSING:
            return None
        return f"{value:g}" if isinstance(value, float) else str(value)

    def variable(self) -> str | None:
        if self.env is None:
            return None
        return self.env or env_name(next(f for f in self.flags if f.startswith("--")))

    def parameter(self) -> inspect.Parameter:
        """The keyword-only parameter typer reads: its type, and a typer.Option holding its default.

        An Option as the default, not in an ``Annotated`` type: typer copies it once per
        parameter instead of twice (of the ~10 M instructions it takes to turn the fetch
        command's 44 parameters into click's, on every run).
        """
        kind = self.kind
        default = self.cli_default()
        optional = kind if default is not None or kind == (bool | None) else kind | None
        info = typer.Option(
            default,
            *self.flags,
            envvar=self.variable(),
            help=self.help,
            rich_help_panel=self.panel,
            metavar=self.metavar,
            show_default=False,
            show_envvar=False,
        )
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, annotation=optional, default=info)


def _method(text: str) -> str:
    return text.upper()


def _headers(texts: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_header(text) for text in texts)


def _data(text: str) -> bytes:
    if not text.startswith("@"):
        return text.encode("utf-8")
    from asyncfetch.source import STDIN

    path = text[1:]
    if path == STDIN:
        raise ValueError("-d @- is not supported: standard input carries the requests")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read --data file {path}: {exc.strerror or exc}") from None


def _fields(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _save_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ValueError(f"--save {path}: not a directory")
    return path


_PARAMS = (
    # -- how INPUTs are read --------------------------------------------------------------------
    Param("csv", ("--csv",), bool, "Read every INPUT as CSV (default: by a .csv name).", INPUT, default=False),
    Param("tsv", ("--tsv",), bool, "Read every INPUT as TSV (default: by a .tsv name).", INPUT, default=False),
    Param(
        "url_column",
        ("--url-column",),
        str,
        "CSV/TSV column of the URL (default: url, any case).",
        INPUT,
        metavar="NAME",
    ),
    # -- what each request carries ------------------------------------------------------------
    Param("method", ("--method", "-X"), str, "Method for URL lines (GET; POST with -d).", REQUEST, "method", _method),
    Param(
        "header",
        ("--header", "-H"),
        list[str],
        "'Name: value' added to every request; repeatable.",
        REQUEST,
        "headers",
        _headers,
        env=None,
        metavar="TEXT",
    ),
    Param("data", ("--data", "-d"), str, "Body for URL lines; @FILE reads FILE.", REQUEST, "data", _data),
    Param(
        "user_agent",
        ("--user-agent", "-A"),
        str,
        "User-Agent header.",
        REQUEST,
        "user_agent",
        shown_default="asyncfetch/VERSION",
    ),
    # -- how requests are made ----------------------------------------------------------------
    Param("concurrency", ("--concurrency", "-c"), int, "Requests in flight at once.", ENGINE, "concurrency"),
    Param("per_host", ("--per-host",), int, "At most N in flight to one host (0: no limit).", ENGINE, "per_host"),
    Param("rate", ("--rate",), float, "At most R request starts per second.", ENGINE, "rate"),
    Param("timeout", ("--timeout", "-t"), float, "Deadline of one attempt, body included (s).", ENGINE, "timeout"),
    Param(
        "connect_timeout",
        ("--connect-timeout",),
        float,
        "Deadline to connect (s).",
        ENGINE,
        "connect_timeout",
        shown_default="min(10, -t)",
    ),
    Param("retries", ("--retries", "-r"), int, "Retries after a transient failure.", ENGINE, "retries"),
    Param("max_retry_wait", ("--max-retry-wait",), float, "Longest wait before a retry (s).", ENGINE, "max_retry_wait"),
    Param(
        "retry_on",
        ("--retry-on",),
        str,
        "Statuses retried: 429,500-599 or none.",
        ENGINE,
        "retry_on",
        str,
        shown_default="429,502,503,504",
        metavar="CODES",
    ),
    Param(
        "per_host_rate", ("--per-host-rate",), float, "At most R starts per second per host.", ENGINE, "per_host_rate"
    ),
    Param("adaptive", ("--adaptive",), bool, "Per host, slow down on 429/503/timeouts (AIMD).", ENGINE, "adaptive"),
    Param(
        "max_host_errors",
        ("--max-host-errors",),
        int,
        "Give up a host after N failures in a row (0: never).",
        ENGINE,
        "max_host_errors",
    ),
    Param("follow", ("--follow/--no-follow",), bool, "Follow redirects (default: on).", ENGINE, "follow"),
    Param("max_redirects", ("--max-redirects",), int, "Most redirects followed.", ENGINE, "max_redirects"),
    Param("http2", ("--http2",), bool, "Negotiate HTTP/2 where the server offers it.", ENGINE, "http2"),
    Param("proxy", ("--proxy",), str, "Proxy for every request (default: *_PROXY).", ENGINE, "proxy"),
    Param("insecure", ("--insecure", "-k"), bool, "Do not verify TLS certificates.", ENGINE, "insecure"),
    Param(
        "max_size",
        ("--max-size",),
        str,
        "Largest body after decoding (K, M, G).",
        ENGINE,
        "max_size",
        parse_size,
        shown_default=format_size(FetchOptions().max_size),
        metavar="BYTES",
    ),
    # -- what records carry -------------------------------------------------------------------
    Param("headers", ("--headers",), bool, "Add the response headers to records.", RECORDS, "include_headers"),
    Param("body", ("--body",), bool, "Add the response body to records.", RECORDS, "include_body"),
    Param(
        "save",
        ("--save",),
        Path,
        "Write each complete body to a file in DIR.",
        RECORDS,
        "save_dir",
        _save_dir,
        metavar="DIR",
    ),
    Param(
        "state",
        ("--state",),
        Path,
        "SQLite state: fetch only what changed.",
        RECORDS,
        "state",
        metavar="FILE",
    ),
    Param("timings", ("--timings",), bool, "Add where the time went: dns, connect, tls, ttfb.", RECORDS, "timings"),
    Param("tls", ("--tls",), bool, "Add TLS version, cipher, certificate and expiry.", RECORDS, "tls"),
    Param(
        "fields",
        ("--fields",),
        str,
        "Only these record fields: url,status,...",
        RECORDS,
        "fields",
        _fields,
        metavar="LIST",
    ),
    Param("dedupe", ("--dedupe",), bool, "Fetch each distinct URL once.", RECORDS, "dedupe"),
    Param("ordered", ("--ordered",), bool, "Write records in input order.", RECORDS, "ordered"),
    # -- where records go, and how the run ends -------------------------------------------------
    Param("output", ("--output", "-o"), Path, "Write records to FILE, not stdout.", OUTPUT, metavar="FILE"),
    Param("resume", ("--resume",), bool, "With -o: skip requests FILE already has, append.", OUTPUT, default=False),
    Param("fail", ("--fail",), bool, "Exit 1 when a status is 400 or more, too.", OUTPUT, default=False),
    # -- what people see ----------------------------------------------------------------------
    Param(
        "progress",
        ("--progress/--no-progress",),
        bool | None,
        "Progress bar (default: when stderr is a terminal).",
        DISPLAY,
    ),
    Param(
        "summary",
        ("--summary/--no-summary",),
        bool | None,
        "Closing summary (default: stderr a terminal).",
        DISPLAY,
    ),
    Param(
        "summary_json",
        ("--summary-json",),
        Path,
        "The whole summary as JSON, to FILE.",
        DISPLAY,
        metavar="FILE",
    ),
    Param("quiet", ("--quiet", "-q"), bool, "No progress, no summary, no warnings.", DISPLAY, default=False),
    # -- the queue --------------------------------------------------------------------------------
    Param(
        "redis_url",
        ("--redis",),
        str,
        "Redis URL: redis://:PASSWORD@HOST:PORT/DB; rediss:// for TLS.",
        QUEUE,
        default="redis://localhost:6379/0",
        shown_default="redis://localhost:6379/0",
        metavar="URL",
    ),
    Param(
        "queue",
        ("--queue",),
        str,
        "Queue name (several can share one Redis).",
        QUEUE,
        default="default",
        shown_default="default",
    ),
    Param("name", ("--name",), str, "Worker name (default: HOST-PID).", QUEUE, env="ASYNCFETCH_WORKER_NAME"),
    Param(
        "claim_after",
        ("--claim-after",),
        float,
        "Seconds a silent worker keeps its chunks.",
        QUEUE,
        default=60.0,
        shown_default="60",
    ),
    Param("burst", ("--burst",), bool, "Exit once the queue has nothing left.", QUEUE, default=False),
    Param("chunk_size", ("--chunk-size",), int, "Requests per queue entry.", QUEUE, default=500, shown_default="500"),
    Param(
        "follow_queue",
        ("--follow", "-f"),
        bool,
        "Keep collecting until every queued request has its record.",
        QUEUE,
        default=False,
        env="ASYNCFETCH_COLLECT_FOLLOW",
    ),
    Param("trim", ("--trim",), bool, "Delete records from Redis once written.", QUEUE, default=False),
)
PARAMS: Mapping[str, Param] = {param.name: param for param in _PARAMS}

REQUEST_OPTIONS = ("method", "header", "data", "user_agent")
ENGINE_OPTIONS = (
    "concurrency",
    "per_host",
    "rate",
    "timeout",
    "connect_timeout",
    "retries",
    "max_retry_wait",
    "retry_on",
    "per_host_rate",
    "adaptive",
    "max_host_errors",
    "follow",
    "max_redirects",
    "http2",
    "proxy",
    "insecure",
    "max_size",
    "headers",
    "body",
    "save",
    "timings",
    "tls",
    "fields",
)
INPUT_OPTIONS = ("csv", "tsv", "url_column")
FETCH_OPTIONS = (
    *INPUT_OPTIONS,
    *REQUEST_OPTIONS,
    *ENGINE_OPTIONS,
    "state",
    "dedupe",
    "ordered",
    "output",
    "resume",
    "fail",
)
DISPLAY_OPTIONS = ("progress", "summary", "summary_json", "quiet")


def summary_json_path(values: Mapping[str, Any]) -> Path | None:
    """``--summary-json FILE`` as given, refused before anything runs when FILE is a directory."""
    path: Path | None = values["summary_json"]
    if path is not None and path.is_dir():
        raise UsageError(f"--summary-json {path}: is a directory")
    return path


class Values(dict[str, Any]):
    """The options a command was given, by name; :meth:`options` turns the engine's into FetchOptions."""

    def options(self, **extra: Any) -> FetchOptions:
        """FetchOptions from the engine options given (the rest keep FetchOptions' defaults)."""
        fields: dict[str, Any] = {}
        for name, given in self.items():
            param = PARAMS.get(name)
            if param is None or param.field is None:
                continue
            value = env_lines(ENV_PREFIX + "HEADER") or None if name == "header" and not given else given
            if value is None:
                continue
            try:
                fields[param.field] = param.convert(value) if param.convert is not None else value
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        try:
            options = FetchOptions(**fields, **extra)
            if options.proxy is None:
                # The *_PROXY variables are checked before anything is fetched too: a bad one is
                # one usage error, not a failure in every request it would carry.
                environment_proxies()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return options


def command(names: Iterable[str], *, extra: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """Decorate ``impl(values: Values, **extra) -> int``: a typer callback taking the named options.

    ``extra`` holds the command's own parameters (arguments, eager options) as name to
    annotation (with its default): they are passed to ``impl`` as keywords.
    """
    chosen = [PARAMS[name] for name in names]
    own = dict(extra or {})

    def decorate(impl: Callable[..., int]) -> Callable[..., int]:
        def callback(**given: Any) -> int:
            kept = {name: given.pop(name) for name in own}
            return impl(Values(given), **kept)

        parameters = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, (annotation, default) in own.items()
        ]
        parameters += [p.parameter() for p in chosen]
        callback.__signature__ = inspect.Signature(parameters, return_annotation=int)  # type: ignore[attr-defined]
        callback.__name__ = impl.__name__
        callback.__doc__ = impl.__doc__
        callback.__annotations__ = {}
        return callback

    return decorate


def inputs_argument(help_text: str) -> tuple[Any, None]:
    """The ``INPUT ...`` argument, as a (annotation, default) pair for :func:`command`."""
    info = typer.Argument(metavar="[INPUT]...", show_default=False, help=help_text)
    return (Annotated[list[str] | None, info], None)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class DisplayChoice(Value):
    """Whether the progress bar, the summary and warnings are shown."""

    progress: bool
    summary: bool
    warnings: bool


def display_choice(values: Mapping[str, Any], *, records_on_stdout: bool = True) -> DisplayChoice:
    """Each on when asked, else when stderr is a terminal; none of them with ``--quiet``.

    The bar is off by default when records go to the same terminal (as curl's meter is):
    a redrawn line and the records would be printed over each other.
    """
    quiet = bool(values.get("quiet"))
    progress, summary = values.get("progress"), values.get("summary")
    terminal = sys.stderr is not None and sys.stderr.isatty()
    records_on_terminal = records_on_stdout and sys.stdout is not None and sys.stdout.isatty()
    return DisplayChoice(
        progress=not quiet and (terminal and not records_on_terminal if progress is None else bool(progress)),
        summary=not quiet and (terminal if summary is None else bool(summary)),
        warnings=not quiet,
    )
