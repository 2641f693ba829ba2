"""``status``: the queue's state, from the counters, the done bitmap and the consumer group."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asyncfetch.distributed.keys import GROUP, QueueKeys, text
from asyncfetch.record import Outcome


async def status(client: aioredis.Redis, keys: QueueKeys) -> dict[str, Any]:
    """The queue's state: requests queued, done, failed; chunks waiting and in flight, per worker."""
    raw_counts: Any = await client.hgetall(keys.counts)
    counts = {text(k): int(v) for k, v in raw_counts.items()}
    queued = int(await client.get(keys.next) or 0)
    done = int(await client.bitcount(keys.done))
    group: dict[str, Any] = {}
    chunks = 0
    consumers: dict[str, dict[str, Any]] = {}
    try:
        # One snapshot: the group's counters and the stream's length must describe the same moment.
        async with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_groups(keys.jobs)
            pipe.xlen(keys.jobs)
            groups, chunks = await pipe.execute()
        for info in groups:
            if text(info["name"]) == GROUP:
                group = info
        for info in await client.xinfo_consumers(keys.jobs, GROUP):
            consumers[text(info["name"])] = {"chunks_in_flight": int(info["pending"]), "idle_s": info["idle"] / 1000}
    except ResponseError:
        pass  # no queue yet
    workers: dict[str, dict[str, Any]] = {}
    async for key in client.scan_iter(match=keys.worker("*"), count=1000):
        name = text(key).removeprefix(keys.worker(""))
        raw_info: Any = await client.hgetall(key)
        info = {text(k): text(v) for k, v in raw_info.items()}
        workers[name] = {
            "host": info.get("host"),
            "pid": int(info["pid"]) if "pid" in info else None,
            "seen_s_ago": round(time.time() - float(info["seen"]), 1) if "seen" in info else None,
            "done": int(info.get("done", 0)),
            "failed": int(info.get("failed", 0)),
            **consumers.get(name, {"chunks_in_flight": 0}),
        }
    return {
        "queue": keys.name,
        "queued": queued,
        "done": done,
        "in_progress_or_waiting": queued - done,
        "ok": counts.get(Outcome.OK, 0),
        "http_errors": counts.get(Outcome.HTTP_ERROR, 0),
        "failed": counts.get(Outcome.FAILED, 0),
        "chunks_waiting": chunks_waiting(group, chunks) if group else 0,
        "chunks_in_flight": int(group.get("pending", 0)) if group else 0,
        "results_stored": int(await client.xlen(keys.results)),
        "workers": workers,
    }


def chunks_waiting(group: dict[str, Any], stream_length: int) -> int:
    """Chunks on the stream not yet delivered to any worker, from ``XINFO GROUPS`` and ``XLEN``.

    Redis's ``lag`` says it when Redis knows. After a restart it does not: the append-only file
    replays deliveries as XCLAIMs, which move the group's last-delivered id without its read
    counter, and ``entries-read`` and ``lag`` come back nil (nil is "unknown", not 0). The stream
    holds only chunks still to do (a finished chunk is acknowledged and deleted in one step), so
    each chunk on it is either in a worker's pending list or waiting: the length less the pending.
    """
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    return max(stream_length - int(group.get("pending", 0)), 0)
