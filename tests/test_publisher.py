"""The publisher's deadline (ingest/publisher.py): only its own cancellation becomes a refusal.

What Kafka does at the deadline (503, nothing acknowledged) is tested against a real
broker in tests/test_app.py and tests/test_spool.py; this is the asyncio part alone.
"""

from __future__ import annotations

import asyncio

import pytest

from passpost.ingest.publisher import _Deadline


async def wait_under(deadline_seconds: float, waited: asyncio.Future[None], made: list[_Deadline] | None = None) -> str:
    deadline = _Deadline(deadline_seconds)
    if made is not None:
        made.append(deadline)
    try:
        await waited
    except asyncio.CancelledError:
        if not deadline.expired():
            raise
        return "expired"
    finally:
        deadline.cancel()
    return "done"


def test_the_deadline_interrupts_the_wait_and_the_task_carries_on() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(wait_under(0.05, asyncio.get_running_loop().create_future()))
        assert await task == "expired"
        assert task.cancelling() == 0
        await asyncio.sleep(0)  # the task is not cancelled again later

    asyncio.run(main())


def test_an_answer_before_the_deadline_leaves_no_timer_behind() -> None:
    async def main() -> None:
        waited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, waited.set_result, None)
        task = asyncio.ensure_future(wait_under(0.05, waited))
        assert await task == "done"
        await asyncio.sleep(0.1)  # a timer left armed would cancel the finished task's successor work
        assert not task.cancelled()

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_is_passed_on_not_turned_into_a_refusal() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(wait_under(10, asyncio.get_running_loop().create_future()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_wins_even_when_the_deadline_also_passed() -> None:
    async def main() -> None:
        made: list[_Deadline] = []
        task = asyncio.ensure_future(wait_under(10, asyncio.get_running_loop().create_future(), made))
        await asyncio.sleep(0)
        made[0]._expire()  # the deadline and someone else ask to cancel before the task runs again
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
