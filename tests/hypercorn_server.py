"""hypercorn over TLS on 127.0.0.1, speaking HTTP/2 to clients that offer it: the HTTP/2 tests' one server start."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config


@contextlib.contextmanager
def serving(
    app: Any, certificate_authority: trustme.CA, directory: Path, *, keep_alive_timeout: float | None = None
) -> Iterator[str]:
    """Run ``app`` (ASGI) in a thread of its own for the ``with`` block; yields its base URL."""
    pem = directory / "server.pem"
    certificate_authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # bound here so the port is known; hypercorn owns it now
    config.certfile = config.keyfile = str(pem)
    if keep_alive_timeout is not None:
        config.keep_alive_timeout = keep_alive_timeout
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(app, config, shutdown_trigger=stopping.wait),), daemon=True
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        loop.close()
