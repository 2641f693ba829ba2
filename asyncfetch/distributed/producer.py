"""``enqueue``: request lines onto the queue, in numbered chunks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable

import redis.asyncio as aioredis

from asyncfetch.dedupe import SeenSet
from asyncfetch.distributed.connection import ensure_group
from asyncfetch.distributed.keys import DEFAULT_CHUNK, ENQUEUE, QueueKeys, shape_to_text
from asyncfetch.options import FetchOptions
from asyncfetch.source import request_line
from asyncfetch.spec import InvalidRequest, RequestShape, SpecBuilder


async def enqueue(
    client: aioredis.Redis,
    keys: QueueKeys,
    lines: AsyncIterable[str],
    *,
    shape: RequestShape | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    dedupe: bool = False,
) -> int:
    """Put request lines on the queue in chunks; returns how many requests were read.

    Lines keep their text; ``shape`` (the -X, -H, -d, -A of the command) travels with each chunk.
    With ``dedupe``, a URL seen before in this call keeps its index but is marked done at once:
    no record, as with ``asyncfetch --dedupe``.
    """
    shape = shape or RequestShape()
    await ensure_group(client, keys)
    enqueue_script = client.register_script(ENQUEUE)
    builder = SpecBuilder(shape.apply(FetchOptions())) if dedupe else None
    seen = SeenSet() if dedupe else None
    shape_text = shape_to_text(shape)
    read = 0
    batch: list[str] = []
    duplicates: list[int] = []

    async def put() -> None:
        token = keys.key(f"enqueued:{uuid.uuid4().hex}")
        await enqueue_script(
            keys=[keys.next, keys.jobs, keys.counts, keys.done, token],
            args=[len(batch), "\n".join(batch), shape_text, 86_400, ",".join(map(str, duplicates))],
        )
        batch.clear()
        duplicates.clear()

    async for raw in lines:
        line = request_line(raw)
        if line is None:
            continue
        if seen is not None and builder is not None and not seen.add(_dedupe_key(builder, line)):
            duplicates.append(len(batch))
            line = ""  # its place (and index) is kept; its text is not needed
        batch.append(line)
        read += 1
        if len(batch) >= chunk_size:
            await put()
    if batch:
        await put()
    return read


def _dedupe_key(builder: SpecBuilder, line: str) -> str:
    """The URL a line requests, as ``--dedupe`` compares them (the line itself if it is invalid)."""
    try:
        return builder.from_line(line, 0).url
    except InvalidRequest as invalid:
        return invalid.url
