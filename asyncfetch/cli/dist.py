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
from asyncfetch.cli.app import UsageError, app, build_options, require_input, require_readable
from asyncfetch.cli.runner import ExitStatus, RunControl, open_output, run_loop
from asyncfetch.resume import cut_torn_tail
from asyncfetch.sinks import LineWriter
from asyncfetch.source import LineReader
from asyncfetch.spec import RequestShape
from asyncfetch.stats import RunStats


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
            sys.stderr.write(f"asyncfetch: error: Redis at {redacted(redis_url)}: {exc}\n")
            return ExitStatus.FAILURES

    return run_loop(guarded)


@app.command("enqueue", help="Put requests on a Redis queue, in the same input formats (INPUT, '-' or stdin).")
def enqueue_command(
    inputs: p.Inputs = None,
    redis_url: p.RedisUrl = p.DEFAULT_REDIS,
    queue: p.QueueName = "default",
    method: p.Method = None,
    header: p.Header = None,
    data: p.Data = None,
    user_agent: p.UserAgent = p.DEFAULT_UA,
    dedupe: p.Dedupe = False,
    chunk_size: p.ChunkSize = 500,
) -> int:
    from asyncfetch import distributed

    paths = list(inputs or [])
    require_input(paths)
    if chunk_size < 1:
        raise UsageError(f"--chunk-size must be 1 or more, not {chunk_size}")
    request_options = build_options(method=method, header=header, data=data, user_agent=user_agent)
    shape = RequestShape(
        method=request_options.method,
        headers=request_options.headers,
        data=request_options.data,
        user_agent=user_agent if user_agent != p.DEFAULT_UA else None,
    )
    require_readable(paths)

    async def main(control: RunControl) -> int:
        client = distributed.connect(redis_url)
        try:
            queued = await distributed.enqueue(
                client,
                distributed.QueueKeys(queue),
                LineReader(paths),
                shape=shape,
                chunk_size=chunk_size,
                dedupe=dedupe,
            )
        finally:
            await client.aclose()
        sys.stderr.write(f"asyncfetch: queued {queued:,} requests on '{queue}' at {distributed.redacted(redis_url)}\n")
        return ExitStatus.OK

    return _run_with_redis(main, redis_url)


@app.command("work", help="Fetch requests from a Redis queue with the usual engine; run one per machine.")
def work_command(
    redis_url: p.RedisUrl = p.DEFAULT_REDIS,
    queue: p.QueueName = "default",
    name: p.WorkerName = None,
    claim_after: p.ClaimAfter = 60.0,
    burst: p.Burst = False,
    concurrency: p.Concurrency = 50,
    per_host: p.PerHost = 0,
    rate: p.Rate = None,
    timeout: p.Timeout = 10.0,
    connect_timeout: p.ConnectTimeout = None,
    retries: p.Retries = 2,
    max_retry_wait: p.MaxRetryWait = 60.0,
    follow: p.Follow = True,
    max_redirects: p.MaxRedirects = 10,
    http2: p.Http2 = False,
    proxy: p.Proxy = None,
    insecure: p.Insecure = False,
    max_size: p.MaxSize = "100M",
    headers: p.Headers = False,
    body: p.Body = False,
    save: p.Save = None,
    progress: p.Progress = None,
    summary: p.Summary = None,
    quiet: p.Quiet = False,
) -> int:
    from asyncfetch import distributed

    if claim_after <= 0:
        raise UsageError(f"--claim-after must be more than 0 seconds, not {claim_after}")
    options = build_options(
        concurrency=concurrency,
        per_host=per_host,
        rate=rate,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retries=retries,
        max_retry_wait=max_retry_wait,
        follow=follow,
        max_redirects=max_redirects,
        http2=http2,
        proxy=proxy,
        insecure=insecure,
        max_size=max_size,
        include_headers=headers,
        include_body=body,
        save_dir=save,
    )
    display = p.display_choice(progress=progress, summary=summary, quiet=quiet, records_on_stdout=False)

    async def main(control: RunControl) -> int:
        client = distributed.connect(redis_url)
        worker = distributed.QueueWorker(
            client, distributed.QueueKeys(queue), options, name=name, claim_after=claim_after, burst=burst
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
        if control.interrupted:
            return ExitStatus.INTERRUPTED
        return ExitStatus.FAILURES if totals.failed else ExitStatus.OK

    return _run_with_redis(main, redis_url)


@app.command("collect", help="Write the records of a Redis queue as JSON lines, each exactly once.")
def collect_command(
    redis_url: p.RedisUrl = p.DEFAULT_REDIS,
    queue: p.QueueName = "default",
    output: p.Output = None,
    follow_queue: p.FollowQueue = False,
    trim: p.Trim = False,
    fail: p.Fail = False,
    summary: p.Summary = None,
    quiet: p.Quiet = False,
) -> int:
    from asyncfetch import distributed

    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    display = p.display_choice(progress=False, summary=summary, quiet=quiet)
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

    async def main(control: RunControl) -> int:
        stats = RunStats()
        fd = open_output(output, append=True) if output is not None else sys.stdout.fileno()
        writer = LineWriter(fd, on_closed=control.pipe_closed)

        def write(line: bytes) -> None:
            writer.write(line)
            stats.note_json(line)

        client = distributed.connect(redis_url)
        try:
            await distributed.collect(
                client,
                distributed.QueueKeys(queue),
                write,
                written=written,
                follow=follow_queue,
                trim=trim,
                flush=writer.flush,
                stop=control.stop,
            )
        finally:
            writer.flush()
            if output is not None:
                os.close(fd)
            await client.aclose()
        if writer.error is not None:
            sys.stderr.write(f"asyncfetch: error: cannot write records: {writer.error.strerror or writer.error}\n")
            return ExitStatus.FAILURES
        if display.summary:
            sys.stderr.write(
                f"asyncfetch: collected {stats.records:,} records: {stats.ok:,} ok, "
                f"{stats.http_errors:,} HTTP >= 400, {stats.failed:,} errors\n"
            )
        if control.interrupted:
            return ExitStatus.INTERRUPTED
        return ExitStatus.FAILURES if stats.failed or (fail and stats.http_errors) else ExitStatus.OK

    return _run_with_redis(main, redis_url)


@app.command("status", help="Print a queue's state as JSON: queued, done, failed, chunks, workers.")
def status_command(redis_url: p.RedisUrl = p.DEFAULT_REDIS, queue: p.QueueName = "default") -> int:
    from asyncfetch import distributed

    async def main(control: RunControl) -> int:
        del control
        client = distributed.connect(redis_url)
        try:
            state = await distributed.status(client, distributed.QueueKeys(queue))
        finally:
            await client.aclose()
        sys.stdout.write(json.dumps(state, indent=2) + "\n")
        return ExitStatus.OK

    return _run_with_redis(main, redis_url)
