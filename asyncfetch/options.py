"""The knobs of one fetch run, as one immutable value.

    FetchOptions()                                  # the contract's defaults
    FetchOptions(concurrency=200, timeout=5)        # 200 in flight, 5 s per attempt
    FetchOptions(per_host=4, rate=50, ordered=True) # polite, and in input order
    FetchOptions(per_host_rate=2, adaptive=True)    # 2 starts/s per host, slower when a host struggles
    FetchOptions(state=Path("state.db"))            # conditional re-fetch: ask only for what changed
    FetchOptions(retry_on="429,500-599")            # the statuses retried (text or a set of ints)

Every field is keyword-only; :func:`asyncfetch.fetch` takes the same names as keywords
(:func:`options_from` builds them, naming the right one for a misspelt keyword).
Invalid values raise :class:`ValueError` with a message fit to show a user, naming the option:
a value of the wrong type included (``timeout="fast"``). Sizes take the command line's text too
(``max_size="5K"``), paths any path-like, ``headers`` a mapping or ``"Name: value"`` strings.
"""

import difflib
import math
import os
import re
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from asyncfetch._version import __version__
from asyncfetch.retry import DEFAULT_RETRY_STATUSES, status_set
from asyncfetch.values import Value

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
    import urllib.request  # here: it loads http.client, ssl and email, which --help does not need

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


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class FetchOptions(Value):
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
        _check_types(self)
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
        if not self.max_retry_wait >= 0:  # NaN too
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


def options_from(values: Mapping[str, Any]) -> FetchOptions:
    """:class:`FetchOptions` from keywords; an unknown one is a ``TypeError`` naming the near miss."""
    known = {f.name for f in fields(FetchOptions)}
    unknown = [name for name in values if name not in known]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(known - {"lookahead"}), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"unknown option {name!r}{hint}")
    return FetchOptions(**values)


# Fields given in bytes: "5K"-style text is taken as on the command line.
_SIZE_FIELDS = frozenset({"max_size"})
_SCALARS = (bool, int, float, str, bytes, Path)


def _option_name(name: str) -> str:
    return name.replace("_", "-")


def _check_types(options: FetchOptions) -> None:
    """Normalise what has one obvious meaning (``"5K"``, a str path) and refuse values of the wrong type.

    Only fields of a scalar type (or such a type or None) are checked here; fields with
    richer values check themselves in ``__post_init__``.
    """
    for name, hint in _hints().items():
        value = getattr(options, name)
        allowed, optional = hint
        if value is None and optional:
            continue
        if name in _SIZE_FIELDS and isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise ValueError(f"{_option_name(name)}: {exc}") from None
        elif name == "headers":
            value = _headers(value)
        elif allowed is Path and isinstance(value, str | os.PathLike):
            value = Path(value)
        elif allowed is bytes and isinstance(value, str):
            value = value.encode()
        elif allowed is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if allowed is not None and (
            not isinstance(value, allowed) or (isinstance(value, bool) and allowed is not bool)
        ):
            raise ValueError(f"{_option_name(name)} must be {_DESCRIPTIONS[allowed]}, not {value!r}")
        object.__setattr__(options, name, value)


_DESCRIPTIONS: dict[type, str] = {
    bool: "True or False",
    int: "a whole number",
    float: "a number",
    str: "a string",
    bytes: "bytes or a string",
    Path: "a path",
    tuple: "a list of (name, value) pairs",
}


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """Headers as pairs, from pairs, a mapping, or ``"Name: value"`` strings."""
    if isinstance(value, Mapping):
        value = list(value.items())
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ValueError(  # noqa: TRY004  (the documented error for any invalid option value)
            f"headers must be a mapping or a list of (name, value) pairs, not {value!r}"
        )
    pairs = []
    for item in value:
        if isinstance(item, str):
            pairs.append(parse_header(item))
        elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(part, str) for part in item):
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(f"headers: not a (name, value) pair of strings: {item!r}")
    return tuple(pairs)


_HINTS: dict[str, tuple[type | None, bool]] = {}


def _hints() -> dict[str, tuple[type | None, bool]]:
    """Per field: the one scalar type it takes (None: checked elsewhere), and whether None is allowed."""
    if not _HINTS:
        # The annotations are objects, not text (no `from __future__ import annotations` here), so
        # they are read as they are: get_type_hints would compile each one (~3 M instructions).
        for f in fields(FetchOptions):
            name, hint = f.name, f.type
            optional = False
            if get_origin(hint) in (Union, types.UnionType):
                args = get_args(hint)
                optional = type(None) in args
                rest = [arg for arg in args if arg is not type(None)]
                hint = rest[0] if len(rest) == 1 else None
            scalar: type | None = hint if isinstance(hint, type) and hint in _SCALARS else None
            if name == "headers":
                scalar = tuple
            _HINTS[name] = (scalar, optional)
    return _HINTS
