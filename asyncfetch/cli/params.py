"""The command-line options, declared once and shared by the commands that take them.

Each option also reads ``ASYNCFETCH_<OPTION>`` from the environment (``ASYNCFETCH_CONCURRENCY=200``,
``ASYNCFETCH_FAIL=1``); ``-H`` reads ``ASYNCFETCH_HEADER``, one header per line, in the command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from asyncfetch.options import DEFAULT_USER_AGENT

REQUEST = "Requests"
ENGINE = "Fetching"
RECORDS = "Records and output"
DISPLAY = "Display"
QUEUE = "Queue (Redis)"


def env(name: str) -> str:
    """The environment variable of an option: ``ASYNCFETCH_`` and its name."""
    return f"ASYNCFETCH_{name}"


@dataclass(frozen=True, slots=True)
class DisplayChoice:
    """Whether the progress bar and the summary are shown."""

    progress: bool
    summary: bool


def display_choice(
    *, progress: bool | None, summary: bool | None, quiet: bool, records_on_stdout: bool = True
) -> DisplayChoice:
    """Each on when asked, else when stderr is a terminal; neither with ``--quiet``.

    The bar is off by default when records go to the same terminal (as curl's meter is):
    a redrawn line and the records would be printed over each other.
    """
    terminal = sys.stderr is not None and sys.stderr.isatty()
    records_on_terminal = records_on_stdout and sys.stdout is not None and sys.stdout.isatty()
    return DisplayChoice(
        progress=not quiet and (terminal and not records_on_terminal if progress is None else progress),
        summary=not quiet and (terminal if summary is None else summary),
    )


def _option(*names: str, var: str | None, help: str, panel: str, **extra: Any) -> typer.models.OptionInfo:
    info: typer.models.OptionInfo = typer.Option(
        *names, envvar=env(var) if var else None, help=help, rich_help_panel=panel, **extra
    )
    return info


Inputs = Annotated[
    list[str] | None,
    typer.Argument(metavar="INPUT", show_default=False, help="Request files; - or none is standard input."),
]

# -- what each request carries --------------------------------------------------------------------
Method = Annotated[
    str | None,
    _option("--method", "-X", var="METHOD", help="Method for URL lines; default GET, POST with -d.", panel=REQUEST),
]
Header = Annotated[
    list[str] | None,
    _option(
        "--header",
        "-H",
        var=None,
        help="'Name: value' for every request (repeatable).",
        panel=REQUEST,
        show_default=False,
    ),
]
Data = Annotated[
    str | None, _option("--data", "-d", var="DATA", help="Body for URL lines; @FILE reads FILE.", panel=REQUEST)
]
UserAgent = Annotated[str, _option("--user-agent", "-A", var="USER_AGENT", help="User-Agent header.", panel=REQUEST)]
DEFAULT_UA = DEFAULT_USER_AGENT

# -- how requests are made --------------------------------------------------------------------------
Concurrency = Annotated[
    int, _option("--concurrency", "-c", var="CONCURRENCY", help="Requests in flight at once.", panel=ENGINE)
]
PerHost = Annotated[
    int, _option("--per-host", var="PER_HOST", help="At most N in flight to one host (0: no limit).", panel=ENGINE)
]
Rate = Annotated[float | None, _option("--rate", var="RATE", help="At most R request starts per second.", panel=ENGINE)]
Timeout = Annotated[
    float, _option("--timeout", "-t", var="TIMEOUT", help="Deadline of one attempt, body included (s).", panel=ENGINE)
]
ConnectTimeout = Annotated[
    float | None,
    _option(
        "--connect-timeout", var="CONNECT_TIMEOUT", help="Deadline to connect (s); default min(10, -t).", panel=ENGINE
    ),
]
Retries = Annotated[
    int, _option("--retries", "-r", var="RETRIES", help="Retries after a transient failure.", panel=ENGINE)
]
MaxRetryWait = Annotated[
    float, _option("--max-retry-wait", var="MAX_RETRY_WAIT", help="Longest wait before a retry (s).", panel=ENGINE)
]
Follow = Annotated[bool, _option("--follow/--no-follow", var="FOLLOW", help="Follow redirects.", panel=ENGINE)]
MaxRedirects = Annotated[
    int, _option("--max-redirects", var="MAX_REDIRECTS", help="Most redirects followed.", panel=ENGINE)
]
Http2 = Annotated[
    bool, _option("--http2", var="HTTP2", help="Negotiate HTTP/2 where the server offers it.", panel=ENGINE)
]
Proxy = Annotated[
    str | None,
    _option("--proxy", var="PROXY", help="Proxy for every request; default the *_PROXY variables.", panel=ENGINE),
]
Insecure = Annotated[
    bool, _option("--insecure", "-k", var="INSECURE", help="Do not verify TLS certificates.", panel=ENGINE)
]
MaxSize = Annotated[
    str, _option("--max-size", var="MAX_SIZE", help="Largest body, after decoding; K, M, G suffixes.", panel=ENGINE)
]

# -- records and where they go ---------------------------------------------------------------------
Headers = Annotated[
    bool, _option("--headers", var="HEADERS", help="Add the response headers to records.", panel=RECORDS)
]
Body = Annotated[bool, _option("--body", var="BODY", help="Add the response body to records.", panel=RECORDS)]
Save = Annotated[
    Path | None, _option("--save", var="SAVE", help="Write each complete body to a file in DIR.", panel=RECORDS)
]
Output = Annotated[
    Path | None, _option("--output", "-o", var="OUTPUT", help="Write records to FILE, not stdout.", panel=RECORDS)
]
Resume = Annotated[
    bool, _option("--resume", var="RESUME", help="With -o: skip requests FILE already records.", panel=RECORDS)
]
Dedupe = Annotated[bool, _option("--dedupe", var="DEDUPE", help="Fetch each distinct URL once.", panel=RECORDS)]
Ordered = Annotated[bool, _option("--ordered", var="ORDERED", help="Write records in input order.", panel=RECORDS)]
Fail = Annotated[bool, _option("--fail", var="FAIL", help="Exit 1 when a status is 400 or more, too.", panel=RECORDS)]

# -- what people see --------------------------------------------------------------------------------
Progress = Annotated[
    bool | None,
    _option(
        "--progress/--no-progress",
        var="PROGRESS",
        help="Progress bar; default on when stderr is a terminal.",
        panel=DISPLAY,
    ),
]
Summary = Annotated[
    bool | None,
    _option(
        "--summary/--no-summary",
        var="SUMMARY",
        help="Closing summary; default on when stderr is a terminal.",
        panel=DISPLAY,
    ),
]
Quiet = Annotated[bool, _option("--quiet", "-q", var="QUIET", help="Neither progress nor summary.", panel=DISPLAY)]

# -- the queue ------------------------------------------------------------------------------------------
RedisUrl = Annotated[
    str,
    _option(
        "--redis",
        var="REDIS",
        help="Redis URL: redis://:PASSWORD@HOST:PORT/DB (password, port and db optional); rediss:// for TLS.",
        panel=QUEUE,
    ),
]
QueueName = Annotated[
    str, _option("--queue", var="QUEUE", help="Queue name (several can share one Redis).", panel=QUEUE)
]
DEFAULT_REDIS = "redis://localhost:6379/0"
WorkerName = Annotated[
    str | None, _option("--name", var="WORKER_NAME", help="Worker name; default HOST-PID.", panel=QUEUE)
]
ClaimAfter = Annotated[
    float,
    _option(
        "--claim-after",
        var="CLAIM_AFTER",
        help="Seconds a worker may stay silent before others take over its chunks.",
        panel=QUEUE,
    ),
]
Burst = Annotated[bool, _option("--burst", var="BURST", help="Exit once the queue has nothing left.", panel=QUEUE)]
ChunkSize = Annotated[int, _option("--chunk-size", var="CHUNK_SIZE", help="Requests per queue entry.", panel=QUEUE)]
FollowQueue = Annotated[
    bool,
    _option(
        "--follow",
        "-f",
        var="COLLECT_FOLLOW",
        help="Keep collecting until every queued request has its record.",
        panel=QUEUE,
    ),
]
Trim = Annotated[
    bool,
    _option(
        "--trim",
        var="TRIM",
        help="Delete records from Redis once written (a single collector of a big queue).",
        panel=QUEUE,
    ),
]
