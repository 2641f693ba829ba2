"""HTTP/2: asyncfetch's own connection (h2conn) beside httpx's HTTP/2 transport, and beside our HTTP/1.1.

    python benchmarks/http2.py [--requests 5000] [--concurrency 100] [--reps 3]

Starts nginx (http2, TLS with a throwaway CA from trustme, one worker, its default
keepalive_requests 1000: so a GOAWAY every 1,000 streams) on 127.0.0.1, then for each body size
runs, each in a fresh process: asyncfetch ``http2=True``; asyncfetch over HTTP/1.1 (TLS); and
``httpx.AsyncClient(http2=True)`` with the same concurrency (a semaphore), retries none for all.
Reports wall time, CPU seconds of the client, and how many requests failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = r"""
import asyncio, json, os, resource, sys, time
kind, base, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
urls = [f"{base}?i={i}" for i in range(n)]

kinds = {}

async def with_asyncfetch(http2):
    import asyncfetch
    failed = 0
    async for record in asyncfetch.fetch(urls, http2=http2, retries=0, concurrency=concurrency):
        failed += record.error is not None or record.status != 200
        if record.error is not None:
            kinds[record.error.kind] = kinds.get(record.error.kind, 0) + 1
    return failed

async def with_httpx():
    import httpx
    failed = 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(http2=True, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(url):
            nonlocal failed
            async with gate:
                try:
                    response = await client.get(url)
                    failed += response.status_code != 200
                except httpx.HTTPError as exc:
                    failed += 1
                    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
        await asyncio.gather(*(one(url) for url in urls))
    return failed

started = time.perf_counter()
if kind == "httpx-h2":
    failed = asyncio.run(with_httpx())
else:
    import uvloop
    failed = uvloop.run(with_asyncfetch(kind == "asyncfetch-h2"))
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "failed": failed, "kinds": kinds}))
"""

NGINX = """daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {dir}/tls.pem; ssl_certificate_key {dir}/tls.pem;
    root {dir}/www;
  }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        sys.exit("nginx is needed (Debian: nginx)")
    import trustme

    with tempfile.TemporaryDirectory(prefix="asyncfetch-h2bench-") as scratch:
        root = Path(scratch)
        os.chmod(root, 0o755)
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(root / "tls.pem"))
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        (root / "www").mkdir()
        (root / "www" / "small").write_bytes(b"ok\n")
        (root / "www" / "100k").write_bytes(os.urandom(100 * 1024))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        user = "user root;\n" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(user + NGINX.format(dir=root, port=port))
        nginx = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            env = {**os.environ, "SSL_CERT_FILE": str(root / "ca.pem")}
            print(f"{args.requests} GETs, concurrency {args.concurrency}, nginx http2 (GOAWAY every 1,000 streams)")
            print("| body | client | wall s (median) | CPU s (median) | failed (per run) |")
            print("|---|---|---|---|---|")
            for body in ("small", "100k"):
                for kind in ("asyncfetch-h2", "httpx-h2", "asyncfetch-h1"):
                    runs = []
                    for _ in range(args.reps):
                        out = subprocess.run(
                            [sys.executable, "-c", CLIENT, kind, f"https://127.0.0.1:{port}/{body}",
                             str(args.requests), str(args.concurrency)],
                            capture_output=True, text=True, env=env, check=True,
                        )  # fmt: skip
                        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    wall = statistics.median(r["wall"] for r in runs)
                    cpu = statistics.median(r["cpu"] for r in runs)
                    failed = ", ".join(f"{r['failed']} {r['kinds'] or ''}".strip() for r in runs)
                    print(f"| {body} | {kind} | {wall:.2f} | {cpu:.2f} | {failed} |")
        finally:
            nginx.terminate()
            nginx.wait(10)


if __name__ == "__main__":
    main()
