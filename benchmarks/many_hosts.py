"""Many hosts over HTTPS: does a client keep the connections a list spread over hosts needs?

    python benchmarks/many_hosts.py                  # 1,250 URLs over 250 hosts, C=100, 3 reps
    python benchmarks/many_hosts.py --hosts 200 --per-host 5 --concurrency 50 --reps 1

The shape of the shared bench's W5, on this machine alone: a local HTTPS server
(benchmarks/pyserver.py with a private CA from trustme) listening on 127.0.0.1 ...
127.0.0.N, the same port (all of 127.0.0.0/8 is loopback on Linux), and a list of
``--per-host`` URLs per host shuffled so that a host's requests are spread through it
(``/ok`` and ``/bytes/1k``, seeded). Hosts are IP addresses: no DNS here (the shared bench
has it). asyncfetch runs with ``--summary`` (connections opened and reused), beside
``curl --parallel`` when curl is installed. The server's count of accepted connections is
the figure that matters: one per host is perfect reuse, one per URL is none.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import benchlib


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _certificates(scratch: Path, hosts: int) -> tuple[Path, Path, Path]:
    """(CA, leaf chain, leaf key) for the IP addresses 127.0.0.1 ... 127.0.0.N."""
    try:
        import trustme
    except ImportError:
        sys.exit("many_hosts.py needs trustme (pip install -e '.[test]')")
    ca = trustme.CA()
    leaf = ca.issue_cert(*(f"127.0.0.{n}" for n in range(1, hosts + 1)))
    paths = scratch / "ca.pem", scratch / "leaf.pem", scratch / "leaf.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(paths[1]))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return paths


def _accepted(port: int, ca: Path) -> int:
    """Connections the server has accepted so far (this one included)."""
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/server_status", context=context, timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(r"^\s*(\d+)\s+\d+\s+\d+\s*$", text, re.MULTILINE)
    assert match is not None, text
    return int(match.group(1))


def _wait_listening(port: int, hosts: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((f"127.0.0.{hosts}", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("many_hosts.py: the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=250, help="distinct hosts (127.0.0.1 ... 127.0.0.N), at most 250")
    parser.add_argument("--per-host", type=int, default=5, help="URLs per host, spread through the list")
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--asyncfetch", help="path of the asyncfetch command (default: on PATH)")
    args = parser.parse_args()
    args.hosts = min(args.hosts, 250)  # 127.0.0.1 ... 127.0.0.250 in one /24 of loopback
    asyncfetch = benchlib.find_asyncfetch(args.asyncfetch)
    benchlib.raise_open_files()
    client_cpu, server_cpu = benchlib.default_cpus()
    with tempfile.TemporaryDirectory(prefix="asyncfetch-many-hosts-") as scratch_name:
        scratch = Path(scratch_name)
        ca, leaf, key = _certificates(scratch, args.hosts)
        port = _free_port()
        rng = random.Random(5)
        urls = [
            f"https://127.0.0.{host}:{port}/{rng.choice(['ok', 'bytes/1k'])}?i={host}-{n}"
            for host in range(1, args.hosts + 1)
            for n in range(args.per_host)
        ]
        rng.shuffle(urls)
        url_file = scratch / "urls.txt"
        url_file.write_text("\n".join(urls) + "\n")
        server_cmd = [
            sys.executable,
            str(benchlib.BENCH_DIR / "pyserver.py"),
            "--port",
            str(port),
            "--hosts",
            str(args.hosts),
            "--cert",
            str(leaf),
            "--key",
            str(key),
        ]
        server = subprocess.Popen(benchlib.pinned(server_cmd, server_cpu), stdout=subprocess.DEVNULL)
        try:
            _wait_listening(port, args.hosts)
            env = {**benchlib.child_env(), "SSL_CERT_FILE": str(ca)}
            env.pop("SSL_CERT_DIR", None)
            peers: dict[str, list[str]] = {
                "asyncfetch": [asyncfetch, "-c", str(args.concurrency), "-r", "0", "--summary", str(url_file)],
            }
            if shutil.which("curl"):
                config = scratch / "curl.cfg"
                config.write_text("".join(f'url = "{url}"\noutput = "/dev/null"\n' for url in urls))
                peers["curl --parallel"] = [
                    "curl", "--parallel", "--parallel-immediate", "--parallel-max", str(min(args.concurrency, 300)),
                    "--cacert", str(ca), "-s", "-K", str(config),
                ]  # fmt: skip
            rows: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in peers}
            for _ in range(args.reps):
                for name, cmd in peers.items():
                    benchlib.wait_quiet(30)
                    before = _accepted(port, ca)
                    with open(os.devnull, "wb") as sink:
                        run = benchlib.run_measured(benchlib.pinned(cmd, client_cpu), timeout=300, stdout=sink, env=env)
                    conns = _accepted(port, ca) - before - 1
                    rows[name].append((run.wall_s, run.cpu_s, run.rss_mb, conns))
        finally:
            server.terminate()
            server.wait(10)
    print(f"{len(urls):,} URLs over {args.hosts} HTTPS hosts ({args.per_host} each, spread), C={args.concurrency}")
    print(benchlib.machine_line())
    table = []
    for name, runs in rows.items():
        table.append(
            [
                name,
                benchlib.med_range([r[0] for r in runs]),
                f"{sorted(r[1] for r in runs)[len(runs) // 2] * 1e6 / len(urls):.0f}",
                f"{sorted(r[2] for r in runs)[len(runs) // 2]:.0f}",
                f"{sorted(r[3] for r in runs)[len(runs) // 2]:,}",
            ]
        )
    print(benchlib.markdown_table(["client", "wall s", "CPU us/req", "peak RSS MB", "connections accepted"], table))


if __name__ == "__main__":
    main()
