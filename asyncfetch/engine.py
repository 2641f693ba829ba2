"""The engine: requests in, records out, everything in between owned by one task group.

    async for record in fetch(["https://example.com", "https://example.org"], concurrency=10):
        print(record.to_json())

Stages, each in its own module, data flowing one way::

    input items ─► spec (parse) ─► Scheduler (per-host queues) ─► worker tasks ─► records
                                                                  (one shared Client)

:func:`fetch` runs the engine in a task of its own and hands records over through a small
buffer, so the caller's loop body never runs inside the engine's task group. The buffer is
bounded: a slow consumer slows the workers down instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx

from asyncfetch.client import Client
from asyncfetch.dedupe import SeenSet
from asyncfetch.options import FetchOptions, options_from
from asyncfetch.record import Record
from asyncfetch.retry import retry_delay
from asyncfetch.save import BodySaver
from asyncfetch.scheduler import Scheduler
from asyncfetch.source import request_line
from asyncfetch.spec import InvalidRequest, RequestShape, RequestSpec, ShapedLine, SpecBuilder, TableRow
from asyncfetch.transport import ConnectionPool
from asyncfetch.worker import Worker

if TYPE_CHECKING:
    from asyncfetch.state import Lookup, StateStore, Stored

RequestItem = str | Mapping[str, Any] | ShapedLine | TableRow
SkipCheck = Callable[[int, str], bool]

# Records waiting for the consumer before workers stop taking new requests.
_OUTPUT_HIGH_WATER = 4096
# Requests read ahead of the workers at least (more with -c above half of it).
LOOKAHEAD = 8192


def fetch(
    requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    skip: SkipCheck | None = None,
    stop: asyncio.Event | None = None,
    options: FetchOptions | None = None,
    **option_values: Any,
) -> FetchRun:
    """Fetch every request; iterate the result for one :class:`Record` per request, as each completes.

    ``requests``: URL lines (blank lines and ``#`` comments are skipped, JSON request objects
    start with ``{``), mappings with the keys of a JSON request object, or
    :class:`~asyncfetch.spec.ShapedLine` (a line with request options of its own), sync or async.
    Options are :class:`FetchOptions` fields as keywords (or ``options=``).
    ``transport``: any ``httpx.AsyncBaseTransport`` instead of the built-in client, e.g.
    ``httpx.MockTransport(respx_router.async_handler)`` in tests.
    ``skip(index, url)``: True drops that request without a record (how ``--resume`` works).
    ``stop``: once set, no new request starts, running ones are abandoned, and the records
    already complete are still yielded before the iteration ends.

    Raises :class:`ValueError` at once for an invalid option value (naming the option), and
    :class:`TypeError` for an unknown option (naming the likely one meant).
    """
    if options is None:
        options = options_from(option_values)
    elif option_values:
        raise TypeError("give options either as FetchOptions or as keywords, not both")
    return FetchRun(_Engine(options, transport, skip), requests, stop)


class FetchRun:
    """One fetch in progress: async-iterate it for records; close it to abandon the rest."""

    def __init__(
        self,
        engine: _Engine,
        requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
        stop: asyncio.Event | None,
    ) -> None:
        self._engine = engine
        self._requests = requests
        self._stop = stop
        self._records: AsyncGenerator[Record, None] | None = None

    @property
    def requests_read(self) -> int:
        """Requests taken from the input so far (blank lines and comments are not requests)."""
        return self._engine.requests_read

    @property
    def skipped(self) -> int:
        """Requests read that will have no record (``skip`` said so, or ``dedupe``)."""
        return self._engine.skipped

    @property
    def attempts_started(self) -> int:
        """Attempts begun so far, those still running (or abandoned by ``stop``) included."""
        return self._engine.attempts_started

    @property
    def connections_opened(self) -> int:
        """Connections the built-in HTTP/1.1 pool has opened so far (0 with a transport of your own)."""
        pool = self._engine.pool
        return pool.connections_opened if pool is not None else 0

    @property
    def connections_reused(self) -> int:
        """Requests the built-in pool sent on a kept-alive connection instead of a new one."""
        pool = self._engine.pool
        return pool.connections_reused if pool is not None else 0

    @property
    def tls_resumed(self) -> int:
        """New TLS connections of the built-in pool that resumed a session instead of a full handshake."""
        pool = self._engine.pool
        return pool.tls_resumed if pool is not None else 0

    def __aiter__(self) -> AsyncGenerator[Record, None]:
        if self._records is not None:
            raise RuntimeError("a fetch can be iterated only once")
        # A generator of its own, not a method's: it must not keep this object alive (a cycle
        # would let an abandoned `break` keep the engine running until the next GC pass).
        self._records = _records(self._engine, self._requests, self._stop)
        return self._records

    async def aclose(self) -> None:
        """Abandon what is still running (no need after iterating to the end)."""
        if self._records is not None:
            await self._records.aclose()

    async def __aenter__(self) -> FetchRun:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def _records(
    engine: _Engine,
    requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
    stop: asyncio.Event | None,
) -> AsyncGenerator[Record, None]:
    """Runs the engine in a task of its own and yields its records.

    The consumer's loop body never runs inside the engine's task group, and closing this
    generator (``break``, ``aclose()``) cancels the engine cleanly.
    """
    runner = asyncio.create_task(engine.run(requests, stop))
    try:
        output = engine.output
        while True:
            while output:
                yield output.popleft()
                engine.consumed()
            if runner.done():
                break
            await engine.wait_for_output()
        while output:
            yield output.popleft()
        runner.result()  # a bug inside the engine surfaces here, not silently
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


class _Engine:
    def __init__(self, options: FetchOptions, transport: httpx.AsyncBaseTransport | None, skip: SkipCheck | None):
        self._options = options
        self._builder = SpecBuilder(options)
        self._shaped_builders: dict[RequestShape, SpecBuilder] = {}
        # Read far enough ahead that the scheduler sees a host's later requests, so that they
        # follow one another on its connection (a held request costs ~850 bytes: 8,192 ~7 MB).
        capacity = options.lookahead or min(max(LOOKAHEAD, 2 * options.concurrency), 200_000)
        # Before the client: its pool asks the scheduler what is queued per host.
        self._scheduler = Scheduler(
            capacity=capacity,
            per_host=options.per_host,
            rate=options.rate,
            per_host_rate=options.per_host_rate,
            adaptive=options.adaptive,
            concurrency=options.concurrency,
            max_host_errors=options.max_host_errors,
        )
        self._own_transport = transport is None
        self._transport: httpx.AsyncBaseTransport = (
            transport if transport is not None else Client(options, demand=self._scheduler.queued)
        )
        self._saver = BodySaver(options.save_dir) if options.save_dir is not None else None
        self._worker = Worker(options, self._transport, self._saver)
        self._skip = skip
        self._seen = SeenSet() if options.dedupe else None
        # --state: opened (and locked) now, so a file in use or not ours is refused before any fetch.
        self._state: StateStore | None = None
        if options.state is not None:
            from asyncfetch.state import StateStore  # sqlite3 is loaded only when asked for

            # Chunks of lookups well under what the scheduler holds: each is answered before
            # a worker reaches its first request.
            self._state = StateStore(options.state, chunk=capacity // 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers = 0
        self.output: deque[Record] = deque()
        self._output_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        # --ordered: records wait here until every earlier index is resolved.
        self._window = max(2 * options.concurrency, 64)
        self._next_index = 0
        self._reorder: dict[int, Record | None] = {}
        self._window_waiter: asyncio.Future[None] | None = None
        self.requests_read = 0
        self.skipped = 0
        self.attempts_started = 0

    @property
    def pool(self) -> ConnectionPool | None:
        """The HTTP/1.1 pool requests go through, when it is ours or one given as the transport."""
        transport = self._transport
        if isinstance(transport, Client):
            return transport.pool
        return transport if isinstance(transport, ConnectionPool) else None

    # -- the consumer's side ---------------------------------------------------------------------
    async def wait_for_output(self) -> None:
        if self.output:
            return
        self._output_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._output_waiter
        finally:
            self._output_waiter = None

    def consumed(self) -> None:
        if self._drain_waiters and len(self.output) < _OUTPUT_HIGH_WATER // 2:
            while self._drain_waiters:
                waiter = self._drain_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def _wake_consumer(self) -> None:
        waiter = self._output_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the run -------------------------------------------------------------------------------
    async def run(
        self, requests: Iterable[RequestItem] | AsyncIterable[RequestItem], stop: asyncio.Event | None
    ) -> None:
        # The stop watcher lives beside the task group, not in it: the group ends when the
        # work does, and the watcher with it.
        watcher = asyncio.create_task(self._watch(stop)) if stop is not None else None
        if self._state is not None:
            self._state.start()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._spawn(self._feed(requests))
        except BaseExceptionGroup as group:
            # One failing task (an unreadable input, a bug) is reported as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if self._options.ordered:
                self._flush_reorder(everything=True)
            if self._own_transport:
                await self._transport.aclose()
            if self._saver is not None:
                self._saver.close()
            if self._state is not None:
                # Every record already made has its update committed before the run ends.
                await self._state.aclose()
            self._wake_consumer()

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = self._group.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._scheduler.stop()
        for task in list(self._tasks):
            task.cancel()

    def _builder_for(self, shape: RequestShape) -> SpecBuilder:
        builder = self._shaped_builders.get(shape)
        if builder is None:
            builder = self._shaped_builders[shape] = SpecBuilder(shape.apply(self._options))
        return builder

    async def _feed(self, requests: Iterable[RequestItem] | AsyncIterable[RequestItem]) -> None:
        scheduler = self._scheduler
        skip = self._skip
        seen = self._seen
        ordered = self._options.ordered
        concurrency = self._options.concurrency
        state = self._state
        index = 0
        try:
            async for given in _each(requests):
                if isinstance(given, ShapedLine):
                    builder = self._builder_for(given.shape)
                    item: str | Mapping[str, Any] | TableRow = given.line
                else:
                    builder = self._builder
                    item = given
                if isinstance(item, str):
                    cleaned = request_line(item)
                    if cleaned is None:
                        continue
                    line = cleaned
                i = index
                index += 1
                self.requests_read = index
                if ordered and i >= self._next_index + self._window:
                    await self._window_space(i)
                try:
                    spec: RequestSpec
                    if isinstance(item, str):
                        spec = builder.from_line(line, i)
                    elif isinstance(item, TableRow):
                        spec = builder.from_row(item, i)
                    else:
                        spec = builder.from_mapping(item, i)
                except InvalidRequest as invalid:
                    if skip is not None and skip(i, invalid.url):
                        self.skipped += 1
                        self._resolve(i, None)
                    else:
                        self._resolve(i, builder.invalid_record(invalid, i))
                    continue
                # Every URL enters the seen set, even one --resume skips: its later duplicates are duplicates.
                duplicate = seen is not None and not seen.add(spec.url)
                if duplicate or (skip is not None and skip(i, spec.url)):
                    self.skipped += 1
                    self._resolve(i, None)
                    continue
                if state is not None and spec.method == "GET":
                    # Asked once taken in, answered (a chunk at a time) long before a worker takes it.
                    await scheduler.put(spec, functools.partial(state.lookup, spec.url))
                else:
                    await scheduler.put(spec)
                if self._workers < concurrency and self._workers < scheduler.held:
                    self._workers += 1
                    self._spawn(self._work())
        finally:
            if state is not None:
                state.send_lookups()  # the last chunk is not going to fill
            scheduler.close()

    async def _work(self) -> None:
        scheduler = self._scheduler
        worker = self._worker
        options = self._options
        state = self._state
        try:
            while True:
                job = await scheduler.get()
                if job is None:
                    return
                down = job.down
                if down is not None:
                    # Its host is given up (--max-host-errors): ended at once, nothing sent.
                    scheduler.finish(job)
                    self._resolve(job.spec.index, worker.refused(job.spec, job.attempts, down))
                    continue
                stored: Stored | None = None
                lookup = cast("Lookup | None", job.stored)  # put with it by _feed: --state, a GET
                tracked = state is not None and lookup is not None
                if state is not None and lookup is not None:
                    stored = await state.answer(lookup)
                self.attempts_started += 1
                outcome = await worker.attempt(job.spec, job.attempts, tracked=tracked, stored=stored)
                record = outcome.record
                error = record.error
                scheduler.report(
                    job,
                    status=record.status,
                    kind=error.kind if error is not None else None,
                    message=error.message if error is not None else "",
                    elapsed=record.elapsed_ms / 1000,
                    size=record.size,
                )
                if outcome.retry_after is not None:
                    # The host asked for quiet: everything queued for it waits, not only this one.
                    scheduler.pause(job.host, min(outcome.retry_after, options.max_retry_wait))
                delay = retry_delay(outcome, job.attempts, options)
                if delay is not None:
                    scheduler.retry(job, delay)
                    continue
                scheduler.finish(job)
                if state is not None and lookup is not None:
                    state.update(lookup, record)
                self._resolve(job.spec.index, record)
                if len(self.output) >= _OUTPUT_HIGH_WATER:
                    await self._drained()
        finally:
            self._workers -= 1

    # -- records out ---------------------------------------------------------------------------
    def _resolve(self, index: int, record: Record | None) -> None:
        """Index ``index`` is done: with this record, or with none (skipped, deduplicated)."""
        if not self._options.ordered:
            if record is not None:
                self.output.append(record)
                self._wake_consumer()
            return
        self._reorder[index] = record
        if index == self._next_index:
            self._flush_reorder()

    def _flush_reorder(self, *, everything: bool = False) -> None:
        reorder = self._reorder
        if everything:
            # Interrupted or ended: what is complete goes out, in order, gaps and all.
            for index in sorted(reorder):
                record = reorder.pop(index)
                if record is not None:
                    self.output.append(record)
            self._wake_consumer()
            return
        while self._next_index in reorder:
            record = reorder.pop(self._next_index)
            self._next_index += 1
            if record is not None:
                self.output.append(record)
        self._wake_consumer()
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _window_space(self, index: int) -> None:
        while index >= self._next_index + self._window:
            self._window_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._window_waiter
            finally:
                self._window_waiter = None

    async def _drained(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter


async def _each(items: Iterable[RequestItem] | AsyncIterable[RequestItem]) -> AsyncIterator[RequestItem]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
