"""The two synchronous ways to fetch a list of URLs, as reference points for plot.py.

    python benchmarks/sync_peers.py sequential URLFILE [--lib requests|httpx|urllib]
    python benchmarks/sync_peers.py threads URLFILE THREADS [--lib requests|httpx|urllib]

sequential: one client, one request after the other.
threads:    concurrent.futures.ThreadPoolExecutor(THREADS), one client per thread (a
            requests.Session or an httpx.Client; urllib opens a connection per request).
Writes one JSON line per URL (url, status, size, ms; error on failure) to stdout. --lib
defaults to requests when installed, else httpx (an asyncfetch dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT_S = 30.0
Fetch = Callable[[str], tuple[int, int]]  # url -> (status, body size)


def default_lib() -> str:
    try:
        import requests  # noqa: F401
    except ImportError:
        return "httpx"
    return "requests"


def make_fetcher(lib: str) -> Fetch:
    """A fetch function bound to a new client of ``lib`` (one per thread)."""
    if lib == "requests":
        import requests

        session = requests.Session()
        session.trust_env = False  # no proxies: everything is on 127.0.0.1

        def fetch_requests(url: str) -> tuple[int, int]:
            response = session.get(url, timeout=TIMEOUT_S)
            return response.status_code, len(response.content)

        return fetch_requests
    if lib == "httpx":
        import httpx

        client = httpx.Client(timeout=TIMEOUT_S, trust_env=False)

        def fetch_httpx(url: str) -> tuple[int, int]:
            response = client.get(url)
            return response.status_code, len(response.content)

        return fetch_httpx
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch_urllib(url: str) -> tuple[int, int]:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return int(response.status), len(response.read())

    return fetch_urllib


def fetch_one(fetch: Fetch, url: str) -> str:
    started = time.perf_counter()
    record: dict[str, Any]
    try:
        status, size = fetch(url)
        record = {"url": url, "status": status, "size": size}
    except Exception as exc:  # any failure is one record, as asyncfetch does
        record = {"url": url, "status": None, "size": 0, "error": type(exc).__name__}
    record["ms"] = round((time.perf_counter() - started) * 1000, 3)
    return json.dumps(record) + "\n"


def sequential(urls: list[str], lib: str) -> None:
    fetch = make_fetcher(lib)
    write = sys.stdout.write
    for url in urls:
        write(fetch_one(fetch, url))


def threads(urls: list[str], lib: str, workers: int) -> None:
    local = threading.local()

    def task(url: str) -> str:
        fetch: Fetch | None = getattr(local, "fetch", None)
        if fetch is None:
            fetch = local.fetch = make_fetcher(lib)
        return fetch_one(fetch, url)

    write = sys.stdout.write
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for line in pool.map(task, urls):
            write(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("sequential", "threads"))
    p.add_argument("urlfile")
    p.add_argument("threads", type=int, nargs="?", default=50)
    p.add_argument("--lib", choices=("requests", "httpx", "urllib"), default=None)
    args = p.parse_args()
    with open(args.urlfile, encoding="utf-8") as f:
        urls = [line.strip() for line in f if line.strip()]
    lib = args.lib or default_lib()
    if args.mode == "sequential":
        sequential(urls, lib)
    else:
        threads(urls, lib, args.threads)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
