"""Deadlines on one timer per duration: what times out, what does not, and what stays a cancel."""

from __future__ import annotations

import asyncio

import pytest

from asyncfetch.deadline import Deadlines

pytestmark = pytest.mark.anyio

# Long enough for a loaded machine never to reach, short enough to expire a test's blocks.
SHORT = 0.05
FOREVER = 60.0


async def _limited(deadlines: Deadlines, seconds: float, work: float) -> str:
    try:
        with deadlines.limit(seconds):
            await asyncio.sleep(work)
    except TimeoutError:
        return "timeout"
    return "done"


async def test_a_block_that_overruns_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    assert await asyncio.wait_for(_limited(deadlines, SHORT, FOREVER), 30) == "timeout"


async def test_a_block_that_ends_in_time_is_never_cancelled_afterwards() -> None:
    """Its entry leaves the queue, and the last to leave takes the queue and its timer."""
    deadlines = Deadlines(asyncio.get_running_loop())
    assert await _limited(deadlines, SHORT, 0) == "done"
    assert deadlines._queues == {}  # not kept until the deadline: one per request's own timeout
    await asyncio.sleep(SHORT * 4)  # past the deadline: a stray cancel would land here


async def test_many_durations_leave_nothing_behind() -> None:
    """A list where each request has a timeout of its own keeps no queue per request."""
    deadlines = Deadlines(asyncio.get_running_loop())
    results = await asyncio.gather(*(_limited(deadlines, FOREVER + i, 0) for i in range(100)))
    assert set(results) == {"done"}
    assert deadlines._queues == {}


async def test_a_later_block_still_times_out_after_the_first_ended_early() -> None:
    """The timer armed for a block that ended early fires, finds the next one not yet due, and is
    armed again for it."""
    deadlines = Deadlines(asyncio.get_running_loop())

    async def quick_then_stuck() -> list[str]:
        first = await _limited(deadlines, 0.2, 0)  # arms the queue's timer, then leaves
        await asyncio.sleep(0.1)
        return [first, await _limited(deadlines, 0.2, FOREVER)]  # due 0.1 s after that timer

    other = asyncio.create_task(_limited(deadlines, 0.2, 0.15))  # keeps the queue (and its timer)
    assert await asyncio.wait_for(quick_then_stuck(), 30) == ["done", "timeout"]
    assert await other == "done"


async def test_only_the_overdue_blocks_of_a_queue_are_cancelled() -> None:
    """One duration, started in turn: when the oldest times out, the younger ones run on."""
    deadlines = Deadlines(asyncio.get_running_loop())
    first = asyncio.create_task(_limited(deadlines, 1.0, FOREVER))
    quick = asyncio.create_task(_limited(deadlines, 1.0, 0.01))
    await asyncio.sleep(0.5)
    # Due half a second after the first; its work ends in between (at ~1.1 s).
    younger = asyncio.create_task(_limited(deadlines, 1.0, 0.6))
    results = await asyncio.wait_for(asyncio.gather(first, quick, younger), 30)
    assert list(results) == ["timeout", "done", "done"]


async def test_each_duration_has_its_own_deadline() -> None:
    """A request's own short timeout expires although the run's long one is far off."""
    deadlines = Deadlines(asyncio.get_running_loop())
    long = asyncio.create_task(_limited(deadlines, FOREVER, 0.3))
    short = asyncio.create_task(_limited(deadlines, SHORT, FOREVER))
    assert list(await asyncio.wait_for(asyncio.gather(long, short), 30)) == ["done", "timeout"]


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    """^C cancels the task: that is not a timeout, and must not be mistaken for one."""
    deadlines = Deadlines(asyncio.get_running_loop())
    task = asyncio.create_task(_limited(deadlines, FOREVER, FOREVER))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_from_outside_as_the_deadline_passes_stays_a_cancel() -> None:
    """Both at once: the task was asked to stop by someone else too, so it stops."""
    deadlines = Deadlines(asyncio.get_running_loop())
    entered = asyncio.Event()

    async def body() -> str:
        try:
            with deadlines.limit(SHORT):
                entered.set()
                await asyncio.sleep(FOREVER)
        except TimeoutError:
            return "timeout"
        return "done"

    task = asyncio.create_task(body())
    await entered.wait()
    [limit] = next(iter(deadlines._queues.values())).running
    limit.expire()  # the deadline passes ...
    task.cancel()  # ... and ^C arrives in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_task_can_go_on_awaiting_after_a_timeout() -> None:
    """The cancellation that made the timeout is taken back: later awaits are not cancelled."""
    deadlines = Deadlines(asyncio.get_running_loop())

    async def twice() -> list[str]:
        first = await _limited(deadlines, SHORT, FOREVER)
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0  # taken back, as a TaskGroup later in the task expects
        await asyncio.sleep(0.01)
        second = await _limited(deadlines, FOREVER, 0)
        return [first, second]

    assert await asyncio.wait_for(twice(), 30) == ["timeout", "done"]


def test_a_limit_needs_a_running_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="running task"):
            Deadlines(loop).limit(1.0)
    finally:
        loop.close()
