"""The naive asyncio + httpx pattern, as a reference point for compare.py.

    python benchmarks/naive_httpx.py URLFILE CONCURRENCY > records.jsonl

What one writes first: one ``httpx.AsyncClient`` (pool of CONCURRENCY connections, httpx's
other defaults: 5 s timeouts, 20 keep-alive connections), an ``asyncio.Queue`` of the URLs and
CONCURRENCY worker tasks, one JSON line per URL on stdout. No retries, no deadlines of its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def worker(client: httpx.AsyncClient, queue: asyncio.Queue[str]) -> None:
    write = sys.stdout.write
    while True:
        try:
            url = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        started = time.perf_counter()
        record: dict[str, object]
        try:
            response = await client.get(url)
            record = {"url": url, "status": response.status_code, "size": len(response.content)}
        except httpx.HTTPError as exc:
            record = {"url": url, "status": None, "size": 0, "error": type(exc).__name__}
        record["ms"] = round((time.perf_counter() - started) * 1000, 3)
        write(json.dumps(record) + "\n")


async def main(urls: list[str], concurrency: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client, queue) for _ in range(concurrency)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        url_list = [line.strip() for line in f if line.strip()]
    asyncio.run(main(url_list, int(sys.argv[2])))
    sys.stdout.flush()
