"""The distributed commands: ``enqueue``, ``work``, ``collect`` and ``status`` over one Redis.

Each is a few lines over :mod:`asyncfetch.distributed`; they share the one-machine command's
options (``work`` takes every engine option, ``enqueue`` the request options) and its exit
statuses. The Redis URL is never printed with its password.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from asyncfetch.cli import params as p
from asyncfetch.cli.runner import RunControl, open_output, run_loop, write_summary_json
from asyncfetch.cli.status import CommandError, ExitStatus, UsageError, outcome_status
from asyncfetch.resume import cut_torn_tail
from asyncfetch.sinks import LineWriter
from asyncfetch.source import STDIN, InputError, LineReader, check_inputs, format_of
from asyncfetch.spec import RequestShape
from asyncfetch.stats import HostTable, RunStats


def _run_with_redis(main: Callable[[RunControl], Coroutine[Any, Any, int]], redis_url: str) -> int:
    """Run a queue command; a Redis that cannot be reached (or refuses us) is one clear line, exit 1.

    Reachability is checked once, without retries, before the command's patient client (which
    rides out a Redis restart for about a minute) takes over.
    """
    from redis.exceptions import RedisError

    from asyncfetch.distributed import check, redacted

    async def guarded(control: RunControl) -> int:
        try:
            await check(redis_url)
            return await main(control)
        except RedisError as exc:
            # redis-py's messages name host and port, never the password; the URL is shown redacted.
            raise CommandError(f"Redis at {redacted(redis_url)}: {exc}") from None

    return run_loop(guarded)


_QUEUE = ("redis_url", "queue")


@p.command(
    (*_QUEUE, *p.REQUEST_OPTIONS, "dedupe", "chunk_size"),
    extra={"inputs": p.inputs_argument("Request files; - or none: standard input.")},
)
def enqueue_command(values: p.Values, *, inputs: list[str] | None) -> int:
    """Put requests on a Redis queue, in the same input formats (INPUT, '-' or stdin)."""
    from asyncfetch import distributed

    paths = list(inputs or [])
    if not paths and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("no INPUT given and standard input is a terminal")
    chunk_size = values["chunk_size"]
    if chunk_size < 1:
        raise UsageError(f"--chunk-size must be 1 or more, not {chunk_size}")
    request_options = values.options()
    shape = RequestShape(
        method=request_options.method,
        headers=request_options.headers,
        data=request_options.data,
        user_agent=values["user_agent"],
    )
    tables = [path for path in paths if format_of(path) != "lines"]
    if tables:
        # A row's other columns could not travel through the queue: say so rather than read rows as URLs.
        raise UsageError(f"{tables[0]}: CSV/TSV input is read by a one-machine run only, not by enqueue")
    try:
        check_inputs(paths)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    redis_url = values["redis_url"]
    queue = values["queue"]

    async def main(control: RunControl) -> int:
        del control
        client = distributed.connect(redis_url)
        try:
            queued = await distributed.enqueue(
                client,
                distributed.QueueKeys(queue),
                LineReader(paths or [STDIN]),
                shape=shape,
                chunk_size=chunk_size,
                dedupe=values["dedupe"],
            )
        finally:
            await client.aclose()
        sys.stderr.write(f"asyncfetch: queued {queued:,} requests on '{queue}' at {distributed.redacted(redis_url)}\n")
        return ExitStatus.OK

    return _run_with_redis(main, redis_url)


@p.command((*_QUEUE, "name", "claim_after", "burst", *p.ENGINE_OPTIONS, "state", "summary", "quiet"))
def work_command(values: p.Values) -> int:
    """Fetch requests from a Redis queue with the usual engine; run one per machine."""
    from asyncfetch import distributed

    if values.get("state") is not None:
        # One machine's store: workers on several machines would each keep a partial one.
        raise UsageError("--state is not supported by asyncfetch work (each machine would keep its own partial state)")
    claim_after = values["claim_after"]
    if claim_after <= 0:
        raise UsageError(f"--claim-after must be more than 0 seconds, not {claim_after}")
    options = values.options()
    display = p.display_choice(values, records_on_stdout=False)
    redis_url = values["redis_url"]

    async def main(control: RunControl) -> int:
        client = distributed.connect(redis_url)
        worker = distributed.QueueWorker(
            client,
            distributed.QueueKeys(values["queue"]),
            options,
            name=values["name"],
            claim_after=claim_after,
            burst=values["burst"],
        )
        try:
            totals = await worker.run(control.stop)
        finally:
            await client.aclose()
        if display.summary:
            sys.stderr.write(
                f"asyncfetch: worker {worker.name}: {totals.records:,} records "
                f"({totals.failed:,} failed), {totals.chunks:,} chunks finished\n"
            )
        return outcome_status(failed=totals.failed, http_errors=0, fail=False, interrupted=control.interrupted)

    return _run_with_redis(main, redis_url)


@p.command((*_QUEUE, "output", "follow_queue", "trim", "fail", "summary", "summary_json", "quiet"))
def collect_command(values: p.Values) -> int:
    """Write the records of a Redis queue as JSON lines, each exactly once."""
    from asyncfetch import distributed

    output = values["output"]
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    summary_json = p.summary_json_path(values)
    display = p.display_choice(values)
    written = distributed.IndexBitmap()
    if output is not None and output.exists():
        # Collecting again into the same file: what it holds is not written twice.
        try:
            cut_torn_tail(str(output))
            with output.open("rb") as existing:
                for line in existing:
                    written.note_line(line)
        except OSError as exc:
            raise UsageError(f"cannot read {output}: {exc.strerror or exc}") from None
    redis_url = values["redis_url"]

    async def main(control: RunControl) -> int:
        # Per-host figures only for the JSON summary: the one-line summary does not show them.
        stats = RunStats(hosts=HostTable() if summary_json is not None else None)
        fd = open_output(output, append=True) if output is not None else sys.stdout.fileno()
        writer = LineWriter(fd, on_closed=control.pipe_closed)

        def write(line: bytes) -> None:
            writer.write(line)
            stats.note_json(line)

        client = distributed.connect(redis_url)
        try:
            await distributed.collect(
                client,
                distributed.QueueKeys(values["queue"]),
                write,
                written=written,
                follow=values["follow_queue"],
                trim=values["trim"],
                flush=writer.flush,
                stop=control.stop,
            )
        finally:
            writer.flush()
            if output is not None:
                os.close(fd)
            await client.aclose()
        if writer.error is not None:
            raise CommandError(f"cannot write records: {writer.error.strerror or writer.error}")
        if display.summary:
            sys.stderr.write(f"asyncfetch: collected {stats.records:,} records: {stats.outcome_line()}\n")
        if summary_json is not None:
            write_summary_json(summary_json, stats, interrupted=control.interrupted)
        return outcome_status(
            failed=stats.failed, http_errors=stats.http_errors, fail=values["fail"], interrupted=control.interrupted
        )

    return _run_with_redis(main, redis_url)


@p.command(_QUEUE)
def status_command(values: p.Values) -> int:
    """Print a queue's state as JSON: queued, done, failed, chunks, workers."""
    from asyncfetch import distributed

    redis_url = values["redis_url"]

    async def main(control: RunControl) -> int:
        del control
        client = distributed.connect(redis_url)
        try:
            state = await distributed.status(client, distributed.QueueKeys(values["queue"]))
        finally:
            await client.aclose()
        sys.stdout.write(json.dumps(state, indent=2) + "\n")
        return ExitStatus.OK

    return _run_with_redis(main, redis_url)
