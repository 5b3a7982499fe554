"""The last step of a batch: its offsets committed to the consumer group, once the sink has it.

Committing is this step and nothing else: the write step calls it after ``Consumer.write``
returned, never before. ``positions`` is the next offset to read per partition as far as
the sink is concerned (set at assignment, moved by each commit); lag is measured from it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from passpost.consumers.runtime.health import ConsumerMetrics
from passpost.consumers.runtime.source import Source
from passpost.errors import describe_error

log = logging.getLogger("passpost.consumer")


class Commit:
    def __init__(self, name: str, source: Source, metrics: ConsumerMetrics) -> None:
        self.name = name
        self.source = source
        self.metrics = metrics
        self.positions: dict[TopicPartition, int] = {}
        self.last_commit = time.monotonic()  # or the start, or the assignment, before the first commit
        self.committed_once = False

    async def __call__(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.source.commit(offsets)
        except KafkaError as error:
            # The sink has the batch: for sinks that store offsets nothing is lost at all, for the
            # others the records come again and the sink's idempotence absorbs them.
            log.warning("consumer %s: commit failed (%s); the batch may be delivered again", self.name,
                        describe_error(error))
        self.last_commit = time.monotonic()
        self.committed_once = True
        self.positions.update(offsets)
        self.update_lag(offsets)

    def start(self, positions: dict[TopicPartition, int]) -> None:
        """Partitions just assigned, at the offsets they start from."""
        self.positions.update(positions)
        if not self.committed_once:
            self.last_commit = time.monotonic()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(self.name, tp.topic, str(tp.partition))

    def update_lag(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            highwater = self.source.highwater(tp)
            if highwater is not None and tp in self.positions:
                self.metrics.lag.labels(self.name, tp.topic, str(tp.partition)).set(
                    max(0, highwater - self.positions[tp]))
