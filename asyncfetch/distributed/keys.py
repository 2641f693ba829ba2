"""The queue's layout in Redis: its keys, the chunk format, and the Lua scripts that change it atomically.

Keys, all under ``asyncfetch:<queue>:``::

    jobs      stream of chunks {first: index of its first request, lines: request lines, \\n-joined,
              shape: the request options they were enqueued with} read by the consumer group
              "workers": a chunk goes to one worker and stays in that worker's pending list until
              acknowledged, and is deleted then: the stream holds only work still to do
    next      counter: index of the next request enqueued (indexes are global across the queue)
    done      bitmap: bit i is set when request i has its record — the exactly-once gate
    results   stream of records {r: the JSON line}
    counts    hash: queued, ok, http (status >= 400), failed (an error record)
    worker:N  hash per worker: host, pid, seen (unix time), done, failed
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from asyncfetch.spec import RequestShape

GROUP = "workers"
DEFAULT_CHUNK = 500

# KEYS: done, results, counts, worker — ARGV: index, JSON line, outcome (ok | http | failed)
RECORD_ONCE = """
if redis.call('SETBIT', KEYS[1], ARGV[1], 1) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'r', ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('HINCRBY', KEYS[4], ARGV[3] == 'failed' and 'failed' or 'done', 1)
return 1
"""

# KEYS: done, jobs — ARGV: group, chunk id, first index, count. A finished chunk is deleted
# too: the jobs stream holds only work still to do (status counts on it).
ACK_IF_COMPLETE = """
local last = tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1
if redis.call('BITCOUNT', KEYS[1], ARGV[3], last, 'BIT') == tonumber(ARGV[4]) then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return redis.call('XDEL', KEYS[2], ARGV[2])
end
return -1
"""

# KEYS: next, jobs, counts, done, token — ARGV: count, lines, shape, token ttl, offsets of
# duplicates ("3,17"). Numbering and queueing in one step, once per token: a call that redis-py
# repeats after a lost reply cannot queue the chunk twice.
ENQUEUE = """
if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[4]) then return -1 end
local count = tonumber(ARGV[1])
local first = redis.call('INCRBY', KEYS[1], count) - count
redis.call('XADD', KEYS[2], '*', 'first', first, 'lines', ARGV[2], 'shape', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'queued', count)
for offset in string.gmatch(ARGV[5], '%d+') do
  redis.call('SETBIT', KEYS[4], first + tonumber(offset), 1)
end
return first
"""

# The index of a record line, found without parsing the JSON.
RECORD_INDEX = re.compile(rb'"index":(\d+)')


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The Redis keys of one named queue."""

    name: str

    def key(self, part: str) -> str:
        return f"asyncfetch:{self.name}:{part}"

    @property
    def jobs(self) -> str:
        return self.key("jobs")

    @property
    def next(self) -> str:
        return self.key("next")

    @property
    def done(self) -> str:
        return self.key("done")

    @property
    def results(self) -> str:
        return self.key("results")

    @property
    def counts(self) -> str:
        return self.key("counts")

    def worker(self, name: str) -> str:
        return self.key(f"worker:{name}")


def shape_to_text(shape: RequestShape) -> str:
    """A chunk's request options as JSON ("" for none: the worker's defaults)."""
    if shape == RequestShape():
        return ""
    return json.dumps(
        {
            "method": shape.method,
            "headers": [list(pair) for pair in shape.headers],
            "data": base64.b64encode(shape.data).decode("ascii") if shape.data is not None else None,
            "user_agent": shape.user_agent,
        },
        separators=(",", ":"),
    )


def shape_from_text(text: str) -> RequestShape:
    """The request options :func:`shape_to_text` wrote."""
    if not text:
        return RequestShape()
    value = json.loads(text)
    return RequestShape(
        method=value["method"],
        headers=tuple((name, content) for name, content in value["headers"]),
        data=base64.b64decode(value["data"]) if value["data"] is not None else None,
        user_agent=value["user_agent"],
    )


def text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py gives bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else value
