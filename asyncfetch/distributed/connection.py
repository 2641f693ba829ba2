"""Reaching Redis: a patient client, a fail-fast check, URLs fit to print, the consumer group."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncfetch.distributed.keys import GROUP, QueueKeys


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, password in the URL) that rides
    out a Redis restart: commands are retried with backoff for about a minute."""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_keepalive=True,
    )


async def check(url: str) -> None:
    """Fail fast, before any patience: one PING, no retries (a wrong URL or password says so at once)."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=5, retry=Retry(ExponentialBackoff(), retries=0))
    try:
        await client.ping()
    finally:
        await client.aclose()


def redacted(url: str) -> str:
    """Where ``url`` points, for messages: scheme, host, port and database only.

    User names, passwords and query parameters (redis-py reads ``?password=`` too) are left out.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a Redis URL that cannot be parsed)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def ensure_group(client: aioredis.Redis, keys: QueueKeys) -> None:
    """Create the jobs stream and its consumer group if they do not exist yet."""
    try:
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
