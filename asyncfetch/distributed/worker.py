"""``work``: chunks off the queue, fetched by one long-lived engine run, records back exactly once.

A worker is one task group: the engine run (fed by the chunks it takes), a sender that writes
records and acknowledgements to Redis, and a heartbeat that keeps its chunks its own. Any of
them failing ends the worker with that error; none dies alone. Redis refusing a command
(out of memory, a replica during failover) is tried again with a growing pause for up to
``patience`` seconds before the worker gives up; a lost connection is retried by the client
itself first (see :func:`~asyncfetch.distributed.connection.connect`). A worker that gives up
loses nothing: its unfinished chunks stay pending and go to another worker after ``claim_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from asyncfetch.distributed.connection import ensure_group
from asyncfetch.distributed.keys import ACK_IF_COMPLETE, GROUP, RECORD_ONCE, QueueKeys, shape_from_text, text
from asyncfetch.engine import fetch
from asyncfetch.options import FetchOptions
from asyncfetch.record import Outcome, Record
from asyncfetch.spec import RequestShape, ShapedLine

_FIRST_PAUSE = 0.25
_LAST_PAUSE = 30.0
DEFAULT_PATIENCE = 60.0

logger = logging.getLogger("asyncfetch.distributed")

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Chunk:
    id: str
    first: int
    count: int
    outstanding: int = 0  # requests fed to the engine whose record is not out yet
    fed: bool = False  # every request of the chunk has been fed (or was done already)


@dataclass(slots=True)
class WorkerTotals:
    """What one worker did: records written to the queue, failures among them, chunks finished."""

    records: int = 0
    failed: int = 0
    chunks: int = 0


@dataclass(slots=True)
class _Outbox:
    records: list[tuple[int, str, str]] = field(default_factory=list)
    acks: list[_Chunk] = field(default_factory=list)


class _Patience:
    """Redis errors in a row, tolerated for ``seconds`` with a doubling pause, then given up on."""

    def __init__(self, what: str, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._seconds = seconds
        self._clock = clock
        self._failing_since: float | None = None
        self._pause = _FIRST_PAUSE

    def succeeded(self) -> None:
        self._failing_since = None
        self._pause = _FIRST_PAUSE

    def pause_after(self, error: RedisError) -> float:
        """How long to wait before the next try; raises ``error`` once the failures have lasted ``seconds``."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        left = self._seconds - (now - self._failing_since)
        if left <= 0:
            raise error
        pause = min(self._pause, left)
        self._pause = min(self._pause * 2, _LAST_PAUSE)
        logger.warning("asyncfetch: cannot %s (%s); trying again in %.1f s", self._what, error, pause)
        return pause


async def _patiently(call: Callable[[], Awaitable[T]], patience: _Patience) -> T:
    """``call()``, tried again on Redis errors for as long as ``patience`` allows."""
    while True:
        try:
            result = await call()
            _stop_if_cancelled()
        except RedisError as exc:
            # A chunk delivered by a call whose reply was lost stays in our pending list, and
            # is claimed again (by us or another worker) after claim_after: nothing is lost.
            await asyncio.sleep(patience.pause_after(exc))
        else:
            patience.succeeded()
            return result


def _stop_if_cancelled() -> None:
    """Raise the cancellation redis-py swallowed, if it did.

    A cancellation that lands mid-command can vanish inside redis-py (redis-py#2028, #2551: seen
    here with pipelines): the command returns as if nothing happened, and a task asked to stop
    goes on, keeping its task group open for ever. The request is still counted on the task.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class QueueWorker:
    """Takes chunks off the queue and fetches them with one long-lived engine run."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: QueueKeys,
        options: FetchOptions,
        *,
        name: str | None = None,
        claim_after: float = 60.0,
        burst: bool = False,
        poll: float = 2.0,
        max_unsent: int = 10_000,
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        self._client = client
        self._keys = keys
        self._options = options
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._claim_after_ms = int(claim_after * 1000)
        self._heartbeat = max(claim_after / 4, 0.05)
        self._burst = burst
        self._poll_ms = int(poll * 1000)
        self._max_unsent = max_unsent
        self._patience = patience
        self._record_once = client.register_script(RECORD_ONCE)
        self._ack_if_complete = client.register_script(ACK_IF_COMPLETE)
        self._claim_cursor = "0-0"
        self._origin: dict[int, tuple[int, _Chunk]] = {}
        self._open: dict[str, _Chunk] = {}
        self._outbox = _Outbox()
        self._wake_sender = asyncio.Event()
        self._sent = asyncio.Event()
        self._writing = False  # the sender is writing an outbox it took
        self._closing = asyncio.Event()  # run() is ending: the loops return
        self.totals = WorkerTotals()

    async def run(self, stop: asyncio.Event | None = None) -> WorkerTotals:
        """Work until ``stop`` is set (or, with ``burst``, until the queue has nothing left).

        Raises what ended the worker early: a Redis error that outlasted the patience, or a bug
        in any of its tasks.
        """
        stop = stop or asyncio.Event()
        await ensure_group(self._client, self._keys)
        await self._announce()
        finished = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_loop(), name=f"{self.name} sender")
                group.create_task(self._heartbeat_loop(), name=f"{self.name} heartbeat")
                try:
                    await self._fetch(stop)
                    await self._flushed()
                finally:
                    # The loops end on this message, not on a cancellation alone: redis-py can
                    # swallow a cancellation that lands mid-command, and a loop that missed
                    # one would keep the task group open for ever.
                    self._closing.set()
                    self._wake_sender.set()
            finished = True
        except BaseExceptionGroup as failure:
            # One failing task is reported as itself (the CLI maps a RedisError to one line).
            if len(failure.exceptions) == 1:
                raise failure.exceptions[0] from None
            raise
        finally:
            if not finished:
                await self._last_send()
        return self.totals

    async def _fetch(self, stop: asyncio.Event) -> None:
        async with fetch(self._requests(stop), options=self._options, stop=stop) as run:
            async for record in run:
                self._take(record)
                if len(self._outbox.records) >= self._max_unsent:
                    await self._flushed()

    async def _last_send(self) -> None:
        """On the way out after a failure: what is complete reaches Redis if it can."""
        try:
            await self._send()
        except RedisError as exc:
            # Not lost: those chunks stay pending and are fetched again by another worker.
            logger.warning("asyncfetch: records of this worker not written to Redis (%s)", exc)

    def _take(self, record: Record) -> None:
        global_index, chunk = self._origin.pop(record.index)
        line = replace(record, index=global_index).to_json()
        # The outcome names are the counters' names in Redis (keys.py: counts).
        self._outbox.records.append((global_index, line, record.outcome.value))
        chunk.outstanding -= 1
        if chunk.fed and chunk.outstanding == 0:
            self._outbox.acks.append(chunk)
        self._wake_sender.set()

    async def _requests(self, stop: asyncio.Event) -> AsyncIterator[str | ShapedLine]:
        """The request lines of the chunks this worker takes, as the engine asks for more."""
        local = 0
        patience = _Patience("take work from Redis", self._patience)
        while not stop.is_set():
            chunk_entry = await _patiently(self._next_chunk, patience)
            if chunk_entry is None:
                if self._burst and await _patiently(self._drained, patience):
                    return
                continue
            entry_id, first, lines, shape = chunk_entry
            if entry_id in self._open:
                continue  # ours already, claimed back after missed heartbeats: it is being fetched
            chunk = _Chunk(entry_id, first, len(lines))
            self._open[entry_id] = chunk
            done = await _patiently(functools.partial(self._done_bits, first, len(lines)), patience)
            for offset, line in enumerate(lines):
                if done[offset]:
                    continue  # recorded by a worker before us (or a duplicate dropped at enqueue)
                self._origin[local] = (first + offset, chunk)
                chunk.outstanding += 1
                local += 1
                yield line if shape is None else ShapedLine(line, shape)
            chunk.fed = True
            if chunk.outstanding == 0:
                self._outbox.acks.append(chunk)
                self._wake_sender.set()

    async def _next_chunk(self) -> tuple[str, int, list[str], RequestShape | None] | None:
        client, keys = self._client, self._keys
        # A chunk abandoned by a silent worker first: its requests have waited longest. The
        # cursor walks the whole pending list over successive calls, not only its head.
        claimed: Any = await client.xautoclaim(
            keys.jobs, GROUP, self.name, self._claim_after_ms, self._claim_cursor, count=1
        )
        self._claim_cursor = text(claimed[0]) if claimed else "0-0"
        entries: Any = claimed[1] if claimed else []
        if not entries:
            answer: Any = await client.xreadgroup(GROUP, self.name, {keys.jobs: ">"}, count=1, block=self._poll_ms)
            entries = answer[0][1] if answer else []
        for entry_id, fields in entries:
            if fields:  # None for an entry deleted from the stream
                lines = fields[b"lines"].decode("utf-8", "surrogateescape")
                shape_text = fields.get(b"shape", b"").decode("utf-8")
                shape = shape_from_text(shape_text) if shape_text else None
                return entry_id.decode("ascii"), int(fields[b"first"]), lines.split("\n"), shape
        return None

    async def _done_bits(self, first: int, count: int) -> list[int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for index in range(first, first + count):
                pipe.getbit(self._keys.done, index)
            return [int(bit) for bit in await pipe.execute()]

    async def _drained(self) -> bool:
        """Nothing undelivered, and nothing pending but our own chunks (so nothing to claim later)."""
        summary = await self._client.xpending(self._keys.jobs, GROUP)
        return int(summary["pending"]) <= len(self._open)

    async def _send_loop(self) -> None:
        patience = _Patience("write records to Redis", self._patience)
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            if self._closing.is_set():
                return  # flushed already, or the worker is failing (run() sends what it can)
            try:
                await self._send()
                _stop_if_cancelled()
            except RedisError as exc:
                # Redis refusing writes for a while (out of memory, a replica during failover):
                # the records wait in the outbox; after the patience, the worker ends with the error.
                if await self._rest(patience.pause_after(exc)):
                    return
                self._wake_sender.set()
            else:
                patience.succeeded()

    async def _send(self) -> None:
        outbox, self._outbox = self._outbox, _Outbox()
        if not outbox.records and not outbox.acks:
            self._sent.set()
            return
        self._writing = True
        try:
            await self._write(outbox)
        except BaseException:
            # Back in front of whatever came meanwhile: sending twice is harmless (the gate).
            self._outbox.records[:0] = outbox.records
            self._outbox.acks[:0] = outbox.acks
            raise
        finally:
            self._writing = False
        for chunk in outbox.acks:
            self._open.pop(chunk.id, None)
        self.totals.records += len(outbox.records)
        self.totals.failed += sum(1 for _, _, outcome in outbox.records if outcome == Outcome.FAILED)
        self.totals.chunks += len(outbox.acks)
        self._sent.set()

    async def _write(self, outbox: _Outbox) -> None:
        keys = self._keys
        worker_key = keys.worker(self.name)
        async with self._client.pipeline(transaction=False) as pipe:
            for index, line, outcome in outbox.records:
                await self._record_once(
                    keys=[keys.done, keys.results, keys.counts, worker_key], args=[index, line, outcome], client=pipe
                )
            for chunk in outbox.acks:
                await self._ack_if_complete(
                    keys=[keys.done, keys.jobs], args=[GROUP, chunk.id, chunk.first, chunk.count], client=pipe
                )
            pipe.hset(worker_key, "seen", f"{time.time():.3f}")
            await pipe.execute()

    async def _flushed(self) -> None:
        """Wait until what is in the outbox now has reached Redis.

        An empty outbox is not enough: the sender may have taken it and be writing it still.
        Never waits on a dead sender: the sender is in this worker's task group, whose failure
        cancels this wait.
        """
        while self._outbox.records or self._outbox.acks or self._writing:
            self._sent.clear()
            self._wake_sender.set()
            await self._sent.wait()

    async def _heartbeat_loop(self) -> None:
        patience = _Patience("tell Redis this worker is alive", self._patience)
        delay = self._heartbeat
        while not await self._rest(delay):
            try:
                await self._beat()
                _stop_if_cancelled()
            except RedisError as exc:
                # Missed beats only risk another worker taking a chunk over (the gate keeps
                # records single); past the patience the worker ends rather than fetch blind.
                delay = patience.pause_after(exc)
            else:
                patience.succeeded()
                delay = self._heartbeat

    async def _rest(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the worker is closing: returns whether it is."""
        if not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._closing.wait()
        return self._closing.is_set()

    async def _beat(self) -> None:
        # Claiming our own pending chunks resets their idle time: as long as we live, nobody
        # takes them over, however long they take.
        if self._open:
            await self._client.xclaim(self._keys.jobs, GROUP, self.name, 0, list(self._open), justid=True)
        await self._client.hset(self._keys.worker(self.name), "seen", f"{time.time():.3f}")

    async def _announce(self) -> None:
        await self._client.hset(
            self._keys.worker(self.name),
            mapping={"host": socket.gethostname(), "pid": os.getpid(), "seen": f"{time.time():.3f}"},
        )
