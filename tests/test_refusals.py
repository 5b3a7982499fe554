"""Trying again what was refused (consumers/runtime/refusals.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from passpost.backoff import Backoff
from passpost.consumers.runtime.refusals import BatchAbandoned, Refusals


def refused_times(times: int) -> tuple[list[int], object]:
    attempts: list[int] = []

    async def attempt() -> None:
        attempts.append(len(attempts))
        if len(attempts) <= times:
            raise ConnectionRefusedError("refused")

    return attempts, attempt


def test_an_attempt_is_repeated_with_backoff_until_it_goes_through() -> None:
    refusals = Refusals("c", Backoff(initial=0.001, cap=0.002), asyncio.Event())
    attempts, attempt = refused_times(3)
    retried: list[None] = []
    asyncio.run(refusals.persist(attempt, (OSError,), "x", on_retry=lambda: retried.append(None)))  # type: ignore[arg-type]
    assert len(attempts) == 4 and len(retried) == 3
    assert refusals.since is not None  # refused until someone clears it (a commit)


def test_an_error_not_named_as_retried_goes_through_at_once() -> None:
    refusals = Refusals("c", Backoff(), asyncio.Event())

    async def attempt() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        asyncio.run(refusals.persist(attempt, (OSError,), "x"))
    assert refusals.since is None


@pytest.mark.parametrize("end", ["stop", "revocation"])
def test_a_stop_or_a_revocation_ends_the_wait_between_attempts_at_once(end: str) -> None:
    stopping = asyncio.Event()
    refusals = Refusals("c", Backoff(initial=30, cap=30), stopping)
    _, attempt = refused_times(1000)

    async def scenario() -> float:
        def let_go() -> None:
            if end == "stop":
                stopping.set()
            else:
                refusals.revoking = True

        asyncio.get_running_loop().call_later(0.05, let_go)
        started = time.monotonic()
        with pytest.raises(BatchAbandoned):
            await refusals.persist(attempt, (OSError,), "x")  # type: ignore[arg-type]
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 2
