"""The publisher's deadlines (ingest/publisher.py): only their own cancellation becomes a refusal.

What Kafka does at the deadline (503, nothing acknowledged) is tested against a real
broker in tests/test_app.py and tests/test_spool.py; this is the asyncio part alone.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from passpost.ingest.publisher import _Deadlines, _Wait


async def wait_under(deadlines: _Deadlines, waited: asyncio.Future[None], made: list[_Wait] | None = None) -> str:
    wait = deadlines.watch()
    if made is not None:
        made.append(wait)
    try:
        await waited
    except asyncio.CancelledError:
        if not wait.timed_out():
            raise
        return "expired"
    finally:
        wait.finish()
    return "done"


def test_a_deadline_interrupts_the_wait_within_a_sweep_and_the_task_carries_on() -> None:
    async def main() -> None:
        deadlines = _Deadlines(0.2, asyncio.get_running_loop())
        started = time.monotonic()
        task = asyncio.ensure_future(wait_under(deadlines, asyncio.get_running_loop().create_future()))
        assert await task == "expired"
        assert 0.2 <= time.monotonic() - started < 0.2 + 2 * _Deadlines.SWEEP_SECONDS + 0.2
        assert task.cancelling() == 0

    asyncio.run(main())


def test_waits_that_end_in_time_are_left_alone_and_the_sweeps_stop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(0.3, loop)
        tasks = []
        for n in range(50):
            waited = loop.create_future()
            loop.call_later(0.005 * n, waited.set_result, None)
            tasks.append(asyncio.ensure_future(wait_under(deadlines, waited)))
        assert await asyncio.gather(*tasks) == ["done"] * 50
        await asyncio.sleep(0.5)  # past every deadline: a wait left watched would have been cancelled
        assert not deadlines._waiting and not deadlines._sweeping

    asyncio.run(main())


def test_a_slow_wait_expires_while_the_quick_ones_after_it_finish() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(0.2, loop)
        slow = asyncio.ensure_future(wait_under(deadlines, loop.create_future()))
        await asyncio.sleep(0)
        quick_future = loop.create_future()
        quick = asyncio.ensure_future(wait_under(deadlines, quick_future))
        await asyncio.sleep(0.05)
        quick_future.set_result(None)
        assert await quick == "done"
        assert await slow == "expired"

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_is_passed_on_not_turned_into_a_refusal() -> None:
    async def main() -> None:
        deadlines = _Deadlines(10, asyncio.get_running_loop())
        task = asyncio.ensure_future(wait_under(deadlines, asyncio.get_running_loop().create_future()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_wins_even_when_the_deadline_also_passed() -> None:
    async def main() -> None:
        made: list[_Wait] = []
        deadlines = _Deadlines(10, asyncio.get_running_loop())
        task = asyncio.ensure_future(wait_under(deadlines, asyncio.get_running_loop().create_future(), made))
        await asyncio.sleep(0)
        made[0].expired = True  # the sweep and someone else ask to cancel before the task runs again
        task.cancel()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
