"""The cost of ``--state``: per request, on a second run over an unchanged list, and at scale.

    python benchmarks/state.py                       # W1-like: 20,000 URLs, -c 100, 3 reps
    python benchmarks/state.py --urls 5000 --reps 1  # a quick look
    python benchmarks/state.py --skip-engine --rows 10000000 --keep /tmp/10m.db  # the store alone, 10 M URLs

Part 1 runs the engine (``asyncfetch.fetch`` in a child process, records written to /dev/null as
the CLI writes them) against ``pyserver.py``'s ``/cond/ok`` (a W1 body with an ETag; 304 when
If-None-Match matches): without ``--state``, with a fresh state file (every answer a 200, every
record stored), and again over that state file (every answer a 304). It prints wall and CPU
time of each, the cost per request of the state, and the second run against the first.

Part 2 (``--rows N``) builds a state file of N rows as a run would leave it and measures its
size per URL and lookups per second: point lookups in one thread, and lookups through
:class:`asyncfetch.state.StateStore` as the engine asks them (a chunk of URLs per ``SELECT``).
``--keep FILE`` keeps that file and reuses it when it already has N rows (10 M take a while).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from server import running_server

_CHILD = """
import asyncio, json, os, sys
from pathlib import Path
import asyncfetch

async def main():
    urls, options = sys.argv[1], json.loads(sys.argv[2])
    if "state" in options:
        options["state"] = Path(options["state"])
    out = os.open(os.devnull, os.O_WRONLY)
    counts = {}
    with open(urls) as lines:
        async for record in asyncfetch.fetch(lines, **options):
            os.write(out, record.to_line())
            key = f"{record.status}/{record.to_dict().get('changed')}"
            counts[key] = counts.get(key, 0) + 1
    print(json.dumps(counts))

asyncio.run(main())
"""


def run_child(urls: Path, options: dict[str, object], cpu: int | None) -> tuple[float, float, dict[str, int]]:
    """Wall seconds, CPU seconds (user + system) and status/changed counts of one engine run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(
        benchlib.pinned([sys.executable, "-c", _CHILD, str(urls), json.dumps(options)], cpu),
        capture_output=True,
        check=True,
        env=benchlib.child_env(),
    )
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu_seconds, json.loads(done.stdout.decode().splitlines()[-1])


def engine_part(args: argparse.Namespace) -> None:
    client_cpu, server_cpu = benchlib.default_cpus()
    with running_server("python", args.port, server_cpu) as server, tempfile.TemporaryDirectory() as scratch:
        urls = Path(scratch) / "urls.txt"
        urls.write_text("".join(f"{server.base}/cond/{args.body}?i={i}\n" for i in range(args.urls)))
        base: dict[str, object] = {"concurrency": args.concurrency, "retries": 0}
        rows: dict[str, list[tuple[float, float]]] = {"plain": [], "first": [], "second": []}
        sizes = []
        for rep in range(args.reps):
            state = Path(scratch) / f"state-{rep}.db"
            for name, options in (
                ("plain", base),
                ("first", {**base, "state": str(state)}),
                ("second", {**base, "state": str(state)}),
            ):
                wall, cpu, counts = run_child(urls, options, client_cpu)
                rows[name].append((wall, cpu))
                print(f"rep {rep + 1} {name:6}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  {counts}", flush=True)
            sizes.append(state.stat().st_size)
        n = args.urls
        wall = {name: statistics.median(w for w, _ in values) for name, values in rows.items()}
        cpu = {name: statistics.median(c for _, c in values) for name, values in rows.items()}
        print()
        print(f"{n} URLs /cond/{args.body}, -c {args.concurrency}, median of {args.reps}; {benchlib.machine_line()}")
        print(
            benchlib.markdown_table(
                ["run", "wall s", "req/s", "CPU s", "CPU µs/req"],
                [
                    [
                        name,
                        f"{wall[name]:.2f}",
                        f"{n / wall[name]:.0f}",
                        f"{cpu[name]:.2f}",
                        f"{cpu[name] / n * 1e6:.0f}",
                    ]
                    for name in rows
                ],
            )
        )
        print(
            f"--state, first run: +{(cpu['first'] - cpu['plain']) / n * 1e6:.1f} µs CPU and "
            f"{(wall['first'] - wall['plain']) / n * 1e6:+.1f} µs wall per request; "
            f"second run (304s): {wall['first'] / wall['second']:.2f}x the first's speed "
            f"({wall['second'] / wall['first'] * 100:.0f} % of its wall time, "
            f"{cpu['second'] / cpu['first'] * 100:.0f} % of its CPU); "
            f"state file {statistics.median(sizes) / n:.0f} bytes per URL"
        )


def store_part(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        if args.keep:
            path = Path(args.keep)
        else:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.scratch))) / "state.db"
        if _rows_in(path) != args.rows:
            build_store(path, args.rows)
        size = path.stat().st_size
        print(f"file {size / 1e6:.1f} MB = {size / args.rows:.0f} bytes per URL")
        measure_lookups(path, args)


def _rows_in(path: Path) -> int:
    """Rows in an existing state file (--keep), 0 if there is none."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM validators").fetchone()[0])


def _url(i: int) -> str:
    return f"https://host{i % 5000}.example.com/path/to/page/{i}.html"


def build_store(path: Path, rows: int) -> None:
    """A state file of ``rows`` rows as a run would leave it (every row an ETag, Last-Modified, SHA-256)."""
    from asyncfetch.state import _SCHEMA, _UPSERT, StateStore, url_key

    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    StateStore(path).close_unstarted()  # made as a run makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(_SCHEMA)
    began = time.perf_counter()
    batch = 20_000
    etag_day = "Tue, 01 Dec 2026 00:00:00 GMT"
    for start in range(0, rows, batch):
        db.execute("BEGIN")
        db.executemany(
            _UPSERT,
            (
                (
                    url_key(_url(i)),
                    f'"{i:016x}-5e2a"',  # a typical 24-character ETag
                    etag_day,
                    os.urandom(32),
                    200,
                    1_764_547_200_000 + i,
                    None,
                )
                for i in range(start, min(start + batch, rows))
            ),
        )
        db.execute("COMMIT")
    built = time.perf_counter() - began
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"{rows} rows written in {built:.1f} s ({rows / built:,.0f} rows/s, batches of {batch})", flush=True)


def measure_lookups(path: Path, args: argparse.Namespace) -> None:
    """Random-key lookups: point SELECTs in one thread, then through StateStore as the engine asks them."""
    from asyncfetch.state import StateStore, url_key

    urls = [_url(i) for i in random.sample(range(args.rows), min(args.lookups, args.rows))]
    keys = [url_key(url) for url in urls]
    with contextlib.closing(sqlite3.connect(path)) as db:
        began = time.perf_counter()
        for key in keys:
            db.execute("SELECT etag, last_modified, sha256 FROM validators WHERE key = ?", (key,)).fetchone()
        point = len(keys) / (time.perf_counter() - began)
    print(f"point lookups, one thread, random keys: {point:,.0f}/s ({1e6 / point:.1f} µs each)")

    async def through_store() -> tuple[float, float]:
        store = StateStore(path)
        store.start()
        began, cpu = time.perf_counter(), time.thread_time()
        # As the engine's feed does: ask for each URL as it is read (the store's thread answers
        # them a chunk at a time), and take each answer as a worker would.
        lookups = [store.lookup(url) for url in urls]
        found = [await store.answer(lookup) for lookup in lookups]
        loop_cpu = time.thread_time() - cpu  # this thread is the event loop's: its share of the work
        elapsed = time.perf_counter() - began
        await store.aclose()
        assert all(f is not None for f in found)
        return len(urls) / elapsed, loop_cpu / len(urls)

    rate, loop_cost = asyncio.run(through_store())
    print(
        f"lookups through StateStore (the engine's path: asked per URL, answered a chunk at a time): "
        f"{rate:,.0f}/s; event loop's share {loop_cost * 1e6:.1f} µs each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=benchlib.DEFAULT_PORT)
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--body", default="ok", choices=("ok", "1k", "100k", "1m"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=0, help="also measure the store alone with this many URLs")
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--scratch", default=None, help="directory for the --rows state file (default: /tmp)")
    parser.add_argument("--keep", default=None, help="the --rows state file: kept, and reused when it has --rows rows")
    parser.add_argument("--skip-engine", action="store_true", help="only the store part (--rows)")
    args = parser.parse_args()
    if not args.skip_engine:
        engine_part(args)
    if args.rows:
        store_part(args)


if __name__ == "__main__":
    main()
