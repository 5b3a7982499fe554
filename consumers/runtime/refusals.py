"""Trying again what the sink or Kafka refused, and knowing for how long it has been refused.

A step that writes (the sink's ``write``, a dead letter) is attempted until it goes through,
with capped exponential backoff between attempts. It is abandoned, uncommitted, when the
runtime stops or when its partitions are being revoked: the records are then read again by
whoever owns them next, so abandoning loses nothing. ``since`` is when the current run of
refusals began; /readyz reports a stall from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from passpost.backoff import Backoff, Retry
from passpost.errors import describe_error

log = logging.getLogger("passpost.consumer")


class BatchAbandoned(Exception):
    """The batch was given up uncommitted (stopped, or revoked while the sink kept refusing it)."""


class Refusals:
    def __init__(self, name: str, backoff: Backoff, stopping: asyncio.Event) -> None:
        self.name = name
        self.backoff = backoff
        self.stopping = stopping
        self.since: float | None = None
        # Set while a rebalance waits for the batch in flight: no more attempts, and a wait ends at once.
        self._revoking = asyncio.Event()

    @property
    def revoking(self) -> bool:
        return self._revoking.is_set()

    @revoking.setter
    def revoking(self, value: bool) -> None:
        if value:
            self._revoking.set()
        else:
            self._revoking.clear()

    def refused(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def cleared(self) -> None:
        self.since = None

    async def persist(self, attempt: Callable[[], Awaitable[None]], retried: tuple[type[BaseException], ...],
                      what: str, *, on_retry: Callable[[], None] | None = None) -> None:
        """Await ``attempt()`` until it returns; ``BatchAbandoned`` when stopping or revoking first.

        ``what`` names the attempt in the log lines (``"the sink refused a batch of 3"``)."""
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                await attempt()
                return
            except retried as error:
                self.refused()
                delay = None if self.revoking else retry.next_delay()
                if delay is not None:
                    if on_retry is not None:
                        on_retry()
                    log.warning("consumer %s: %s (%s); retrying in %.1f s", self.name, what, describe_error(error),
                                delay)
                    retry.attempts += 1
                    if await self._wait(delay):
                        continue
                log.warning("consumer %s: %s (%s); abandoned uncommitted, it will be read again", self.name, what,
                            describe_error(error))
                raise BatchAbandoned from None

    async def _wait(self, delay: float) -> bool:
        """Sleep ``delay``; False as soon as the runtime stops or a revocation begins."""
        ends = [asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(self._revoking.wait())]
        try:
            await asyncio.wait(ends, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
        return not (self.stopping.is_set() or self.revoking)
