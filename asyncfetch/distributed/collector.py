"""``collect``: the queue's records, each written exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from asyncfetch.distributed.keys import RECORD_INDEX, QueueKeys


class IndexBitmap:
    """Which request indexes have been written: one bit each (12.5 MB per 100 million)."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (index & 7)))

    def add(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits) // 2 + 4096)))
        self._bits[byte] |= 1 << (index & 7)

    def note_line(self, line: bytes) -> int | None:
        """Remember the index of a written record line; returns it (None for a line with none)."""
        match = RECORD_INDEX.search(line)
        if match is None:
            return None
        index = int(match.group(1))
        self.add(index)
        return index


async def collect(
    client: aioredis.Redis,
    keys: QueueKeys,
    write: Callable[[bytes], None],
    *,
    written: IndexBitmap,
    follow: bool = False,
    trim: bool = False,
    flush: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    batch: int = 1000,
    poll: float = 1.0,
) -> None:
    """Write every record of the queue not in ``written`` (JSON line + newline) through ``write``.

    With ``follow``, waits for more until every queued request has its record. With ``trim``,
    records leave Redis once written (after ``flush``): for a single collector of a big queue.
    """
    position = "0-0"
    while stop is None or not stop.is_set():
        # Complete before the read and nothing read: then nothing can still be on its way.
        complete = follow and await _complete(client, keys)
        answer: Any = await client.xread(
            {keys.results: position}, count=batch, block=int(poll * 1000) if follow and not complete else None
        )
        entries: Any = answer[0][1] if answer else []
        for entry_id, fields in entries:
            position = entry_id.decode("ascii")
            line = fields[b"r"]
            match = RECORD_INDEX.search(line)
            if match is not None:
                index = int(match.group(1))
                if index in written:
                    continue
                written.add(index)
            write(line + b"\n")
        if entries:
            if trim:
                if flush is not None:
                    flush()
                await client.xdel(keys.results, *[entry_id for entry_id, _ in entries])
            continue
        if not follow or complete:
            return


async def _complete(client: aioredis.Redis, keys: QueueKeys) -> bool:
    queued = int(await client.get(keys.next) or 0)
    return queued > 0 and int(await client.bitcount(keys.done)) >= queued
