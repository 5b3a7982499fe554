"""The step that hands a decoded batch to the sink and then commits it.

One batch is in flight at a time: ``submit`` starts writing it (the sink works in a thread
or on the network) while the runner decodes the next; ``join`` waits for it and says whether
it was committed. Offsets move only after ``Consumer.write`` returned (``commit.py``):

- ``RetryLater`` or an ``OSError``: the same batch again after a backoff (``refusals.py``),
  until it goes through, the runtime stops, or its partitions are revoked (then it is
  abandoned uncommitted and read again by the next owner);
- ``PoisonBatch``: its events are written one by one, those still refused are dead-lettered,
  and the sink's offsets then move past them with an empty batch;
- anything else is the sink's bug: the runtime stops, uncommitted, and ``run()`` raises it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from passpost.consumers.runtime.commit import Commit
from passpost.consumers.runtime.consumer import Batch, Consumer
from passpost.consumers.runtime.decode import DeadLetter, FetchedRecords
from passpost.consumers.runtime.errors import PoisonBatch, RetryLater
from passpost.consumers.runtime.health import ConsumerMetrics
from passpost.consumers.runtime.refusals import BatchAbandoned, Refusals
from passpost.consumers.runtime.tracing import run_batch
from passpost.errors import describe_error

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("passpost.consumer")

# What a sink's write may raise to have the batch retried (anything else but PoisonBatch is a bug).
RETRIED = (RetryLater, OSError)


class Write:
    def __init__(self, consumer: Consumer, commit: Commit, refusals: Refusals, dead_letter: DeadLetter,
                 metrics: ConsumerMetrics) -> None:
        self.consumer = consumer
        self.name = consumer.name
        self.commit = commit
        self.refusals = refusals
        self.dead_letter = dead_letter
        self.metrics = metrics
        self.fatal: BaseException | None = None  # the sink's bug, raised by the runner
        self._pending: asyncio.Task[None] | None = None

    def submit(self, batch: Batch, records: FetchedRecords, started: float, span: Span | None = None) -> None:
        """Start writing ``batch`` (``started``: when it was fetched; ``span``: its span, ended once written).
        ``join`` the previous one first."""
        assert self._pending is None, "submit() before the previous batch was joined"
        self._pending = asyncio.create_task(run_batch(
            span, records, lambda: self._write_and_commit(batch, records, started)))

    async def join(self) -> bool:
        """Wait for the batch in flight; False when it was abandoned or failed, uncommitted: then the
        batches fetched after it must not be written either."""
        task, self._pending = self._pending, None
        if task is None:
            return True
        try:
            await task
        except BatchAbandoned:
            return False
        except Exception as error:  # noqa: BLE001 (a sink's bug: stop, uncommitted; the runner raises it)
            log.error("consumer %s: the sink raised %s (neither RetryLater nor PoisonBatch): stopping without "
                      "committing the batch", self.name, describe_error(error))
            self.fatal = self.fatal or error
            self.consumer.stopping.set()
            return False
        return True

    async def _write_and_commit(self, batch: Batch, records: FetchedRecords, started: float) -> None:
        await self._write_isolating(batch, records)
        await self.commit(batch.next_offsets)
        self.refusals.cleared()
        self.metrics.events.inc(len(batch))
        self.metrics.batches.inc()
        self.metrics.batch_duration.observe(time.perf_counter() - started)

    async def _write_isolating(self, batch: Batch, records: FetchedRecords) -> None:
        try:
            await self._write(batch)
            return
        except PoisonBatch as poison:
            if not batch.items:
                raise  # nothing left to isolate: a sink that refuses bare offsets has a bug
            if len(batch) == 1:
                item = batch.items[0]
                await self.dead_letter(records.at(item.partition, item.offset), "poison", str(poison))
            else:
                log.warning("consumer %s: the sink refused a batch of %d as poison (%s); writing its events one "
                            "by one", self.name, len(batch), describe_error(poison))
                for item in batch.items:
                    single = Batch([item], {TopicPartition(item.topic, item.partition): item.offset + 1})
                    await self._write_isolating(single, records)
        # The sink's offsets (and the commit) move past the dead letters too.
        await self._write(Batch([], batch.next_offsets))

    async def _write(self, batch: Batch) -> None:
        await self.refusals.persist(lambda: self.consumer.write(batch), RETRIED,
                                    f"the sink refused a batch of {len(batch)}", on_retry=self.metrics.retries.inc)
