"""asyncfetch: fetch many URLs concurrently, one JSON record per request.

    import asyncfetch

    async for record in asyncfetch.fetch(["https://example.com"], concurrency=10):
        print(record.to_json())

The command line (``asyncfetch``) is a thin layer over :func:`fetch`; importing this package
loads neither typer nor rich. Names are imported on first use, so ``asyncfetch --version``
does not pay for httpx.
"""

from __future__ import annotations

from importlib import import_module

from asyncfetch._version import __version__

# Not `from typing import TYPE_CHECKING`: typing costs ~10 ms, a third of `asyncfetch --version`
# (the console script imports this package first). Type checkers read the name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from asyncfetch.engine import FetchRun, fetch
    from asyncfetch.errors import ErrorKind, Failure
    from asyncfetch.options import FetchOptions
    from asyncfetch.record import Record, Redirect

__all__ = ["ErrorKind", "Failure", "FetchOptions", "FetchRun", "Record", "Redirect", "__version__", "fetch"]

_HOMES = {
    "fetch": "asyncfetch.engine",
    "FetchRun": "asyncfetch.engine",
    "ErrorKind": "asyncfetch.errors",
    "Failure": "asyncfetch.errors",
    "FetchOptions": "asyncfetch.options",
    "Record": "asyncfetch.record",
    "Redirect": "asyncfetch.record",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'asyncfetch' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
