"""The retry policy, in one place: what is retried, and how long to wait before the next attempt.

    RETRYABLE_KINDS                      connect, timeout, read, protocol (the contract's list)
    DEFAULT_RETRY_STATUSES               429, 502, 503, 504 (``--retry-on`` replaces them)
    parse_statuses("429,500-599")        the statuses of a ``--retry-on`` value
    retry_delay(outcome, attempts, options)   seconds to wait, or None when the outcome is final

Never retried: ``dns``, ``tls``, ``invalid_*``, ``too_*`` (they would fail the same way
again), and a request that may have reached the server unless its method is idempotent.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncfetch.options import FetchOptions
    from asyncfetch.worker import Outcome

# Failures worth another attempt (the contract's list); the rest would fail the same way again.
# ErrorKind values by their text (an ErrorKind is a str): this module, which FetchOptions
# imports, then loads neither errors.py nor httpx.
RETRYABLE_KINDS: frozenset[str] = frozenset({"connect", "timeout", "read", "protocol"})
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})

_RANGE = re.compile(r"^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$")


def parse_statuses(text: str) -> frozenset[int]:
    """The statuses named by ``"429,500-599"``: codes and inclusive ranges, comma-separated.

    An empty text (or ``"none"``) names no status: only errors are retried. Raises
    :class:`ValueError` naming ``--retry-on`` for anything else.
    """
    if text.strip().lower() in ("", "none"):
        return frozenset()
    statuses: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(f"retry-on: not a status or a range of statuses: {part.strip()!r} (e.g. 429,500-599)")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 100 <= low <= high <= 599:
            raise ValueError(f"retry-on: statuses are 100 to 599, low to high, not {part.strip()!r}")
        statuses.update(range(low, high + 1))
    return frozenset(statuses)


def status_set(value: object) -> frozenset[int]:
    """``retry_on`` as given to :class:`FetchOptions` (text, or any collection of ints) as a frozenset."""
    if isinstance(value, str):
        return parse_statuses(value)
    if not isinstance(value, Iterable):
        raise ValueError(f"retry-on: expected statuses such as 429,500-599, not {value!r}")  # noqa: TRY004  (a user's value)
    statuses = frozenset(value)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"retry-on: not an HTTP status: {status!r}")
    return statuses


def retry_delay(outcome: Outcome, attempts: int, options: FetchOptions) -> float | None:
    """Seconds to wait before the next attempt, or None when this outcome is final."""
    if attempts > options.retries:
        return None
    record = outcome.record
    error = record.error
    if error is not None:
        if error.kind not in RETRYABLE_KINDS:
            return None
    elif record.status not in options.retry_on:
        return None
    # Here, not at the top: FetchOptions imports this module and must not load httpx (http.py does).
    from asyncfetch.http import IDEMPOTENT_METHODS

    # A request that may have reached the server goes again only if doing so is harmless.
    if record.method not in IDEMPOTENT_METHODS and not outcome.not_sent:
        return None
    if outcome.retry_after is not None:
        return min(outcome.retry_after, options.max_retry_wait)
    ceiling = min(options.max_retry_wait, 0.5 * 2 ** (attempts - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311  (jitter, not cryptography)
