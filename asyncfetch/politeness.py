"""Per-host politeness policy: how one host's answers change how hard it is pushed.

The scheduler owns the queues and the timers; this module owns the rules, as plain state
machines with no clock or loop of their own (the scheduler passes the time in).

:class:`Adaptive` (``--adaptive``) is AIMD per host, never beyond the user's limits:

- A *congestion signal* is an answer 429 or 503, an attempt that timed out, or an answer
  markedly slower than the host's usual (more than 4 times its smoothed latency, and over
  1 s; bodies over 1 MiB are not judged, their time is transfer time). On a signal the
  host's window (requests in flight at once, starting at ``--per-host``, or ``-c`` without
  it) halves, down to 1; a signal while the window is already 1 doubles the spacing between
  the host's starts instead (0.25 s at first, at most 10 s, never below ``1/--per-host-rate``).
  Only requests started after the last back-off count, for backing off and for recovering:
  a burst already in flight when the host first struggled backs off once, not once each, and
  its late healthy answers do not undo the back-off.
- A *healthy answer* (a status below 500, not 429, not slow) shrinks the extra spacing by
  a quarter (dropped once under 10 ms); when there is none left, the window grows by 1/window,
  that is by one request per window of healthy answers, up to its ceiling.
- Everything else (other errors, other 5xx) changes nothing.

:class:`Breaker` (``--max-host-errors N``): N connect or timeout failures in a row on one
host, with no answer in between, and the host is given up for the rest of the run.
"""

from __future__ import annotations

from asyncfetch.errors import ErrorKind

# Doubling the spacing starts from this many seconds, and stops at the ceiling.
FIRST_DELAY = 0.25
MAX_DELAY = 10.0
# Extra spacing under this is dropped altogether.
_DELAY_FLOOR = 0.01
# Each healthy answer keeps this share of the extra spacing.
_DELAY_DECAY = 0.75
# "Markedly slower": this many times the smoothed latency, and at least this long.
SLOW_FACTOR = 4.0
SLOW_FLOOR = 1.0
# Bodies larger than this take the time their size takes: their latency says nothing.
_JUDGED_SIZE = 1024 * 1024
# Answers seen before the smoothed latency is trusted, and the weight of each new one.
_WARM_UP = 5
_ALPHA = 0.2
_CONGESTED_STATUSES = frozenset({429, 503})
# Failures that say the host cannot be reached at all (the breaker counts these).
UNREACHABLE_KINDS = frozenset({ErrorKind.CONNECT, ErrorKind.TIMEOUT})


class Adaptive:
    """One host's AIMD state: its window (concurrency) and its extra spacing between starts."""

    __slots__ = ("backed_off_at", "ceiling", "delay", "latency", "min_interval", "samples", "window")

    def __init__(self, ceiling: int, min_interval: float) -> None:
        self.ceiling = ceiling
        self.min_interval = min_interval
        self.window = float(ceiling)
        self.delay = 0.0
        self.latency = 0.0
        self.samples = 0
        self.backed_off_at = float("-inf")

    @property
    def limit(self) -> int:
        """Requests this host may have in flight now."""
        return max(1, int(self.window))

    @property
    def interval(self) -> float:
        """Seconds between two starts on this host now."""
        return max(self.min_interval, self.delay)

    @property
    def at_rest(self) -> bool:
        """Nothing learnt that differs from the user's limits: the state can be dropped."""
        return self.delay == 0.0 and self.window >= self.ceiling

    def observe(
        self, *, started: float, now: float, status: int | None, kind: ErrorKind | None, elapsed: float, size: int
    ) -> bool:
        """Learn from one attempt; True when the host's pace just got slower (a back-off)."""
        slow = False
        if status is not None and kind is None and size <= _JUDGED_SIZE:
            slow = self._slow(elapsed)
        if started < self.backed_off_at:
            # Sent under the old pace: the back-off since already answered it, whatever it says.
            return False
        congested = status in _CONGESTED_STATUSES or kind is ErrorKind.TIMEOUT or slow
        if congested:
            self.backed_off_at = now
            if self.window > 1:
                self.window = max(1.0, self.window / 2)
            else:
                self.delay = min(MAX_DELAY, max(2 * self.interval, FIRST_DELAY))
            return True
        if kind is None and status is not None and status < 500:
            if self.delay > 0:
                self.delay *= _DELAY_DECAY
                if self.delay < max(_DELAY_FLOOR, self.min_interval):
                    self.delay = 0.0
            else:
                self.window = min(float(self.ceiling), self.window + 1 / self.window)
        return False

    def _slow(self, elapsed: float) -> bool:
        """Whether ``elapsed`` is markedly slower than usual; updates the smoothed latency."""
        usual = self.latency
        slow = self.samples >= _WARM_UP and elapsed > max(SLOW_FACTOR * usual, SLOW_FLOOR)
        # A slow answer moves the average only a little (capped at twice it), so a host that
        # stays slower becomes the new usual over a few dozen answers instead of at once.
        sample = min(elapsed, 2 * usual) if self.samples >= _WARM_UP else elapsed
        self.latency = sample if self.samples == 0 else usual + _ALPHA * (sample - usual)
        self.samples += 1
        return slow


class Breaker:
    """Counts one host's connect/timeout failures in a row; trips at ``limit`` (0: never)."""

    __slots__ = ("failures", "last", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0
        self.last = ""

    def observe(self, *, status: int | None, kind: ErrorKind | None, message: str) -> bool:
        """Learn from one attempt; True when this failure trips the breaker."""
        if kind in UNREACHABLE_KINDS and status is None:
            self.failures += 1
            self.last = f"{kind}: {message}"
            return self.limit > 0 and self.failures == self.limit
        if status is not None or kind is not None:
            self.failures = 0  # an answer (or a failure of another kind): the host is there
        return False
