"""A fake of what the runtime's steps ask of Kafka (``consumers/runtime/source.py``): partitions as
lists of records, committed offsets, positions, and hooks that act between two calls the way
a producer or a rebalance would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord, TopicPartition

from passpost import settings as settings_module
from passpost.consumers import testing
from passpost.consumers.runtime.consumer import Batch, Consumer
from passpost.schemas.codec import encode
from passpost.schemas.event import PassPostback
from passpost.settings import Settings

TOPIC = "events"


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


def record(partition: int, offset: int, value: bytes | PassPostback, timestamp_ms: int = 0) -> ConsumerRecord:
    data = encode(value) if isinstance(value, PassPostback) else value
    return ConsumerRecord(TOPIC, partition, offset, timestamp_ms, 0, None, data, None, 0, len(data), [])


@dataclass
class FakeSource:
    logs: dict[TopicPartition, list[ConsumerRecord]] = field(default_factory=dict)
    committed_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    # Run after the named call returns: ``after["end_offsets"] = append_one`` acts between two calls.
    after: dict[str, Callable[[], None]] = field(default_factory=dict)
    commit_error: BaseException | None = None

    def append(self, tp: TopicPartition, value: bytes | PassPostback, timestamp_ms: int) -> None:
        log = self.logs.setdefault(tp, [])
        log.append(record(tp.partition, len(log), value, timestamp_ms))

    def _called(self, name: str) -> None:
        self.calls.append(name)
        hook = self.after.pop(name, None)
        if hook is not None:
            hook()

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs.get(partition, []))

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        fetched = {}
        for tp, log in self.logs.items():
            records = log[self.positions.get(tp, 0):][:max_records]
            if records:
                fetched[tp] = records
                self.positions[tp] = records[-1].offset + 1
        if not fetched:
            await asyncio.sleep(timeout_ms / 1000)
        return fetched

    async def committed(self, partition: TopicPartition) -> int | None:
        self._called("committed")
        return self.committed_offsets.get(partition)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._called("commit")
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))
        self.committed_offsets.update(offsets)

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self._called("beginning_offsets")
        return {tp: 0 for tp in partitions}

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.sleep(0)
        result = {tp: len(self.logs.get(tp, [])) for tp in partitions}
        self._called("end_offsets")
        return result

    async def offsets_for_times(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        await asyncio.sleep(0)
        result: dict[TopicPartition, Any] = {}
        for tp, moment in timestamps.items():
            newer = [r for r in self.logs.get(tp, []) if r.timestamp >= moment]
            result[tp] = OffsetAndTimestamp(newer[0].offset, newer[0].timestamp) if newer else None
        self._called("offsets_for_times")
        return result


def settings() -> Settings:
    return settings_module.defaults().replace(events_topic=TOPIC, consumer_retry_max_seconds=0.05)


class Sink(Consumer):
    """Keeps what it is given; ``refuse`` is raised by the next writes (one each) before any goes through."""

    name = "sink"

    def __init__(self, refuse: Sequence[BaseException] = (), *, stall: asyncio.Event | None = None) -> None:
        super().__init__(settings())
        self.written: list[Batch] = []
        self.refuse = list(refuse)
        self.stall = stall  # when set, write waits for it before it does anything

    async def write(self, batch: Batch) -> None:
        if self.stall is not None:
            await self.stall.wait()
        if self.refuse:
            raise self.refuse.pop(0)
        self.written.append(batch)


def event(**fields: Any) -> PassPostback:
    return testing.event(**fields)
