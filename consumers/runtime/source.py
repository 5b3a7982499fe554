"""What the runtime's steps ask of the Kafka consumer client.

The runner hands its steps an ``aiokafka.AIOKafkaConsumer``; naming the calls they make here
lets each step be tested against a fake that plays a broker, rebalances included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition

Fetched = dict[TopicPartition, list[ConsumerRecord]]


class Source(Protocol):
    def assignment(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> Fetched: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    # Values are aiokafka's OffsetAndTimestamp (an ``offset`` attribute), or None where no record is as new.
    async def offsets_for_times(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, Any]: ...
