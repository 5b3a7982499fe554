"""Waiting between attempts: the one retry helper of every part (the consumer runtime and its sinks,
the spool's forwarder, the schema registry client).

``Backoff`` says how long (from ``initial``, doubling up to ``cap``, with optional jitter and
an overall ``deadline``); ``Retry`` counts the attempts of one operation and waits, but never
past a stop: the wait ends as soon as ``stopping`` is set, so SIGTERM is not held up by a
sleep of up to ``cap`` seconds.

    retry = Retry(Backoff(cap=30), stopping)
    while True:
        try:
            return await attempt()
        except TransientError:
            if not await retry.wait():   # stopped (or past the deadline): give up
                raise
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``initial`` doubling up to ``cap``; give up after ``deadline`` (None: never)."""

    initial: float = 0.1
    cap: float = 30.0
    deadline: float | None = None
    jitter: bool = False  # keeps several clients from retrying a recovering server in lockstep

    def delay(self, attempt: int) -> float:
        base = min(self.cap, self.initial * 2.0 ** attempt)
        return base * random.uniform(0.8, 1.0) if self.jitter else base


class Retry:
    """The attempts of one operation under a ``Backoff``."""

    def __init__(self, backoff: Backoff, stopping: asyncio.Event | None = None) -> None:
        self.backoff = backoff
        self.stopping = stopping
        self.attempts = 0
        self._started = time.monotonic()

    @property
    def stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def next_delay(self) -> float | None:
        """The wait before the next attempt, or None when there is none (stopped, or past the deadline)."""
        if self.stopped:
            return None
        delay = self.backoff.delay(self.attempts)
        if self.backoff.deadline is not None and time.monotonic() - self._started + delay > self.backoff.deadline:
            return None
        return delay

    async def wait(self, delay: float | None = None) -> bool:
        """Wait ``delay`` (default: ``next_delay()``) unless stopped meanwhile; False when there is no next attempt."""
        delay = self.next_delay() if delay is None else delay
        if delay is None:
            return False
        self.attempts += 1
        if self.stopping is None:
            await asyncio.sleep(delay)
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return not self.stopping.is_set()
