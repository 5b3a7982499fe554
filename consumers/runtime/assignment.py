"""Which partitions reach the sink, and from which offset.

At each assignment every partition starts from the sink's stored offset (an
``ExactlyOnceConsumer``, after its topic's identity is checked), else from the group's
committed offset, else where a partition never read starts (``Consumer.first_read_since``:
its beginning, or the first record of a recent moment). Until those positions are applied a
partition's records never reach the sink: aiokafka starts fetching new partitions from the
committed offsets on its own while the positions are being read. ``generation`` counts
assignments and revocations, so that records fetched across one are not used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import TopicPartition

from passpost.backoff import Backoff, Retry
from passpost.consumers.runtime.consumer import Consumer, ExactlyOnceConsumer
from passpost.consumers.runtime.source import Fetched, Source
from passpost.errors import PasspostError, describe_error
from passpost.kafka import KafkaUnavailable
from passpost.settings import Settings
from passpost.topic_metadata import TopicIdentity, TopicMetadata

log = logging.getLogger("passpost.consumer")

# What the topic's identity is now, or None while the topic does not exist (KafkaUnavailable: ask again).
TopicLookup = Callable[[], Awaitable[TopicIdentity | None]]


def topic_lookup(settings: Settings, topic: str) -> TopicLookup:
    async def lookup() -> TopicIdentity | None:
        async with TopicMetadata(settings) as metadata:
            return (await metadata.topics([topic])).identity(topic)
    return lookup


class Assignment:
    def __init__(self, consumer: Consumer, topic: str, source: Source, lookup: TopicLookup, backoff: Backoff,
                 stopping: asyncio.Event) -> None:
        self.consumer = consumer
        self.topic = topic
        self.name = consumer.name
        self.source = source
        self.lookup = lookup
        self.backoff = backoff
        self.stopping = stopping
        self.applied: set[TopicPartition] = set()  # partitions whose start positions are applied
        self.generation = 0
        self.fatal: PasspostError | None = None  # found while assigning; the runner raises it

    def usable(self, fetched: Fetched, generation: int) -> Fetched:
        """The records of a fetch that may reach the sink, ``generation`` taken when the fetch returned.

        After a rebalance positions were reset (to the committed or the sink's offsets): records
        fetched before it may lie beyond a dropped batch, and are fetched again. Records of a
        partition whose start position is not applied yet come again from there too."""
        if generation != self.generation:
            return {}
        return {tp: records for tp, records in fetched.items() if records and tp in self.applied}

    def revoke(self, partitions: Sequence[TopicPartition]) -> None:
        self.generation += 1
        self.applied.difference_update(partitions)

    async def assign(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        """Seek each partition to where it starts; None when stopped (or fatally refused) first."""
        starts = await self._start_offsets_retried(sorted(partitions)) if partitions else {}
        if starts is None:
            return None
        for tp, offset in starts.items():
            self.source.seek(tp, offset)
        self.applied = set(partitions)
        self.generation += 1
        if partitions:
                log.info("consumer %s: resuming %s", self.name,
                     ", ".join(f"{tp.partition}@{offset}" for tp, offset in sorted(starts.items())))
        return starts

    async def check_identity(self, consumer: ExactlyOnceConsumer) -> None:
        """At the start and again at each assignment: the topic may have been re-created meanwhile."""
        identity = await self.lookup()
        if identity is None:
            raise KafkaUnavailable(f"topic {self.topic} is not in the cluster's metadata")
        await consumer.check_topic(self.topic, identity)

    async def _start_offsets_retried(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int] | None:
        # aiokafka only logs a rebalance listener's exception: given up, the partitions would stay unread.
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                return await self.start_offsets(partitions)
            except PasspostError as error:
                # ForeignOffsets, TopicIdsUnsupported: asking again cannot help.
                if not isinstance(error, KafkaUnavailable):
                    self.fatal = error
                    self.stopping.set()
                    return None
                failure: Exception = error
            except Exception as error:  # noqa: BLE001 (the sink's store, retried like a batch)
                failure = error
            delay = retry.next_delay()
            if delay is None:
                return None
            log.warning("consumer %s: cannot read where its partitions start (%s); retrying in %.1f s",
                        self.name, describe_error(failure), delay)
            if not await retry.wait(delay):
                return None

    async def start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if isinstance(self.consumer, ExactlyOnceConsumer):
            # The sink is the truth: a partition it has never seen starts as a fresh one, whatever
            # the group committed (also after `passpost rebuild`).
            await self.check_identity(self.consumer)
            known = await self.consumer.load_offsets(partitions)
        else:
            known = {}
            for tp in partitions:
                committed = await self.source.committed(tp)
                if committed is not None:
                    known[tp] = committed
        fresh = [tp for tp in partitions if tp not in known]
        return {**await self.first_offsets(fresh), **known}

    async def first_offsets(self, fresh: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not fresh:
            return {}
        since = self.consumer.first_read_since()
        if since is None:
            return dict(await self.source.beginning_offsets(fresh))
        # The ends are read first: a record appended while the times are looked up is then at or
        # after the end read, so starting at the earlier of the two never skips it.
        ends = await self.source.end_offsets(fresh)
        found = await self.source.offsets_for_times({tp: int((time.time() - since) * 1000) for tp in fresh})
        log.info("consumer %s: first read of %s from %g s back", self.name,
                 ", ".join(str(tp.partition) for tp in fresh), since)
        return {tp: ends[tp] if found.get(tp) is None else min(found[tp].offset, ends[tp]) for tp in fresh}

    async def wait_for_topic(self, waiting: Callable[[str], None], poll_seconds: float) -> bool:
        """Wait until the topic exists (then check an ``ExactlyOnceConsumer``'s stored identity); False if
        stopped first. ``waiting`` is told why, once.

        Subscribed to a topic that does not exist yet, aiokafka would only see it at its next metadata
        refresh (every 5 minutes): asking every ``poll_seconds`` gets the partitions assigned within
        seconds of the topic's creation."""
        topic = self.topic
        told = False
        while not self.stopping.is_set():
            try:
                identity = await self.lookup()
            except KafkaUnavailable as error:  # a broker restarting: ask again
                log.warning("consumer %s: %s", self.name, describe_error(error))
                identity = None
            if identity is not None:
                if isinstance(self.consumer, ExactlyOnceConsumer):
                    # Before any stored offset is used: those of another incarnation of the topic stop it here.
                    await self.consumer.check_topic(topic, identity)
                return True
            if not told:
                told = True
                waiting(f"topic {topic} does not exist yet")
                log.warning("consumer %s: waiting for topic %s to be created", self.name, topic)
            try:
                await asyncio.wait_for(self.stopping.wait(), poll_seconds)
            except TimeoutError:
                pass
        return False
