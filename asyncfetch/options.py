"""The knobs of one fetch run, as one immutable value.

    FetchOptions()                                  # the contract's defaults
    FetchOptions(concurrency=200, timeout=5)        # 200 in flight, 5 s per attempt
    FetchOptions(per_host=4, rate=50, ordered=True) # polite, and in input order
    FetchOptions(per_host_rate=2, adaptive=True)    # 2 starts/s per host, slower when a host struggles
    FetchOptions(state=Path("state.db"))            # conditional re-fetch: ask only for what changed
    FetchOptions(retry_on="429,500-599")            # the statuses retried (text or a set of ints)

Every field is keyword-only; :func:`asyncfetch.fetch` takes the same names as keywords.
Invalid values raise :class:`ValueError` with a message fit to show a user.
"""

from __future__ import annotations

import math
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from asyncfetch._version import __version__
from asyncfetch.retry import DEFAULT_RETRY_STATUSES, status_set

MAX_CONCURRENCY = 100_000
DEFAULT_USER_AGENT = f"asyncfetch/{__version__}"

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from ``"100M"``-style text: suffixes K, M and G are powers of 1024."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use a number of bytes, optionally with K, M or G)")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()]


def format_size(size: int) -> str:
    """``"100M"``-style text for a number of bytes (the largest suffix that divides it)."""
    for suffix in ("G", "M", "K"):
        factor = _SIZE_FACTORS[suffix]
        if size and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
# curl's default when a proxy URL names no port (and 443 for an https:// proxy).
_DEFAULT_PROXY_PORT = 1080


def parse_proxy(text: str, *, source: str = "proxy") -> str:
    """A proxy URL as the transports take it, from what a user wrote (``source`` names where).

    Without a scheme it is ``http://``, and without a port 1080, as in curl: ``127.0.0.1:3128``
    is ``http://127.0.0.1:3128``. Messages never repeat the credentials a URL may carry.
    """
    value = text.strip()
    if not value:
        raise ValueError(f"{source}: empty proxy URL")
    if "://" not in value:
        value = "http://" + value
    scheme = value.split("://", 1)[0].lower()
    if scheme not in PROXY_SCHEMES:
        raise ValueError(
            f"{source}: unsupported proxy scheme {scheme!r} (use http://, https://, socks5:// or socks5h://)"
        )
    parts = urllib.parse.urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{source}: the proxy's port is not a number from 1 to 65535") from None
    host = parts.hostname
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{source}: a proxy URL needs a host, e.g. http://127.0.0.1:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{source}: a proxy URL is scheme://[user:password@]host[:port], with no path")
    if port is None:
        port = 443 if scheme == "https" else _DEFAULT_PROXY_PORT
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
    host_text = f"[{host}]" if ":" in host else host
    return f"{scheme}://{userinfo}{host_text}:{port}"


def proxy_label(url: str) -> str:
    """``host:port`` of a proxy URL, for messages: never its credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def environment_proxies() -> dict[str, str]:
    """The ``*_PROXY`` variables (``http``, ``https``, ``all``) as urllib reads them, each checked
    and completed like ``--proxy``; ``no`` (``NO_PROXY``) as it is. Raises ValueError naming the variable."""
    proxies = {}
    for scheme, value in urllib.request.getproxies_environment().items():
        if scheme == "no":
            proxies[scheme] = value
        elif scheme in ("http", "https", "all"):  # ftp_proxy and the like are for other programs
            proxies[scheme] = parse_proxy(value, source=f"{scheme}_proxy")
    return proxies


def parse_header(text: str) -> tuple[str, str]:
    """``("Name", "value")`` from ``"Name: value"`` (the form of curl's ``-H``)."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise ValueError(f"not a header: {text!r} (expected 'Name: value')")
    return name, value.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOptions:
    """How to fetch: concurrency, politeness, deadlines, retries, what each request carries."""

    concurrency: int = 50
    per_host: int = 0
    rate: float | None = None
    timeout: float = 10.0
    connect_timeout: float | None = None
    retries: int = 2
    max_retry_wait: float = 60.0
    follow: bool = True
    max_redirects: int = 10
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    data: bytes | None = None
    user_agent: str = DEFAULT_USER_AGENT
    http2: bool = False
    proxy: str | None = field(default=None, repr=False)  # may carry credentials: never in a repr
    insecure: bool = False
    max_size: int = 100 * 1024**2
    include_headers: bool = False
    include_body: bool = False
    save_dir: Path | None = None
    timings: bool = False
    tls: bool = False
    fields: tuple[str, ...] | None = None
    dedupe: bool = False
    ordered: bool = False
    retry_on: frozenset[int] = DEFAULT_RETRY_STATUSES
    per_host_rate: float | None = None
    adaptive: bool = False
    max_host_errors: int = 10
    state: Path | None = None
    # Not a user knob: where the engine may hold requests it has read but not started.
    lookahead: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {self.concurrency}")
        if self.per_host < 0:
            raise ValueError(f"per-host must be 0 (no limit) or more, not {self.per_host}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be more than 0 requests per second, not {self.rate}")
        if not 0 < self.timeout < math.inf:
            raise ValueError(f"timeout must be more than 0 seconds, not {self.timeout}")
        if self.connect_timeout is not None and not 0 < self.connect_timeout < math.inf:
            raise ValueError(f"connect-timeout must be more than 0 seconds, not {self.connect_timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.max_retry_wait < 0:
            raise ValueError(f"max-retry-wait must be 0 or more seconds, not {self.max_retry_wait}")
        if self.max_redirects < 0:
            raise ValueError(f"max-redirects must be 0 or more, not {self.max_redirects}")
        if self.max_size < 0:
            raise ValueError(f"max-size must be 0 or more bytes, not {self.max_size}")
        if self.proxy is not None:
            object.__setattr__(self, "proxy", parse_proxy(self.proxy))
        if self.fields is not None:
            given: object = self.fields
            # "url,status" (as on the command line) and lists are taken too, kept as a tuple.
            names = given.split(",") if isinstance(given, str) else list(self.fields)
            object.__setattr__(self, "fields", tuple(name.strip() for name in names if name.strip()))
            self._check_fields(self.fields)
        # Text ("429,500-599") or any collection of statuses; always a frozenset once built.
        object.__setattr__(self, "retry_on", status_set(self.retry_on))
        if self.per_host_rate is not None and not 0 < self.per_host_rate < math.inf:
            raise ValueError(f"per-host-rate must be more than 0 requests per second, not {self.per_host_rate}")
        if self.max_host_errors < 0:
            raise ValueError(f"max-host-errors must be 0 (never give up on a host) or more, not {self.max_host_errors}")
        if self.method is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", self.method):
            raise ValueError(f"not an HTTP method: {self.method!r}")

    def _check_fields(self, fields: tuple[str, ...]) -> None:
        # Here, not at the top: options stays importable without httpx (the CLI's start-up).
        from asyncfetch.record import RECORD_FIELDS

        if not fields:
            raise ValueError("fields must name at least one record field, e.g. url,status,sha256")
        unknown = [name for name in fields if name not in RECORD_FIELDS]
        if unknown:
            raise ValueError(
                f"unknown record field {', '.join(map(repr, unknown))}: choose from {', '.join(RECORD_FIELDS)}"
            )
        # A field that only an option fills would never appear: say so instead of silently dropping it.
        needs = {
            "headers": ("headers", self.include_headers),
            "body": ("body", self.include_body),
            "body_encoding": ("body", self.include_body),
            "saved_to": ("save", self.save_dir is not None),
            "timings": ("timings", self.timings),
            "tls": ("tls", self.tls),
        }
        for name in fields:
            if name in needs and not needs[name][1]:
                raise ValueError(f"field {name!r} needs --{needs[name][0]}")

    @property
    def record_fields(self) -> frozenset[str] | None:
        """The keys records keep (``fields``), as a set; None keeps them all."""
        return frozenset(self.fields) if self.fields is not None else None

    @property
    def effective_connect_timeout(self) -> float:
        """The connect deadline: as given, else the smaller of 10 s and the attempt deadline."""
        if self.connect_timeout is not None:
            return min(self.connect_timeout, self.timeout)
        return min(10.0, self.timeout)
