"""The first step of a batch: fetched records to a ``Batch`` the sink can take.

Each record becomes an ``Item`` (or, for a ``columnar`` consumer, a row of ``Columns``, with
no event object per record). A record that does not decode, or that the consumer's
``validate`` refuses, goes to the dead-letter topic, confirmed, before the batch moves on;
``Batch.next_offsets`` still covers it, so its offset moves with the batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiokafka import ConsumerRecord

from passpost.consumers.runtime.consumer import Batch, Columns, Consumer, Item
from passpost.consumers.runtime.refusals import BatchAbandoned
from passpost.consumers.runtime.source import Fetched
from passpost.schemas.codec import DecodeError, decode, decode_columns
from passpost.schemas.registry import RegistryResolver

# Keeps a record on the dead-letter topic with (error, detail); returns once the broker has it.
DeadLetter = Callable[[ConsumerRecord, str, str], Awaitable[None]]


class FetchedRecords:
    """A batch's records by (partition, offset), indexed only when a poison batch asks for one (rarely):
    indexing every record of every batch would cost the event loop a dict entry per event."""

    __slots__ = ("_by_position", "_fetched")

    def __init__(self, fetched: Fetched) -> None:
        self._fetched = fetched
        self._by_position: dict[tuple[int, int], ConsumerRecord] | None = None

    def all(self) -> Iterator[ConsumerRecord]:
        """Every record of the batch, in partition order (the batch's span links their contexts)."""
        for records in self._fetched.values():
            yield from records

    def at(self, partition: int, offset: int) -> ConsumerRecord:
        if self._by_position is None:
            self._by_position = {(record.partition, record.offset): record
                                 for records in self._fetched.values() for record in records}
        return self._by_position[(partition, offset)]


class Decode:
    def __init__(self, consumer: Consumer, dead_letter: DeadLetter, resolver: RegistryResolver | None) -> None:
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.resolver = resolver
        # Called for every event: skipped when the consumer keeps the base class's, which refuses none.
        self.validate = None if type(consumer).validate is Consumer.validate else consumer.validate

    async def __call__(self, fetched: Fetched) -> tuple[Batch, FetchedRecords]:
        """The batch, and its records should the sink find it poison. ``BatchAbandoned`` when stopped
        while the schema registry does not answer: nothing of the batch is used."""
        if self.resolver is not None and not await self.resolver.learn(
                (record.value for records in fetched.values() for record in records), self.consumer.stopping):
            raise BatchAbandoned
        next_offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
        if self.consumer.columnar:
            return Batch(columns=await self._columns(fetched), next_offsets=next_offsets), FetchedRecords(fetched)
        return Batch(await self._items(fetched), next_offsets), FetchedRecords(fetched)

    async def _items(self, fetched: Fetched) -> list[Item]:
        items: list[Item] = []
        validate, resolver, append = self.validate, self.resolver, items.append
        for records in fetched.values():
            for record in records:
                try:
                    event = decode(record.value, resolver=resolver)
                except DecodeError as error:
                    await self.dead_letter(record, "undecodable", str(error))
                    continue
                reason = None if validate is None else validate(event)
                if reason is not None:
                    await self.dead_letter(record, "rejected", reason)
                    continue
                append(Item(event, record.topic, record.partition, record.offset))
        return items

    async def _columns(self, fetched: Fetched) -> Columns:
        records = [record for batch in fetched.values() for record in batch]
        decoded = decode_columns([record.value for record in records], resolver=self.resolver)
        for index, error in decoded.errors:
            await self.dead_letter(records[index], "undecodable", str(error))
        if decoded.decoded is not None:
            records = [records[index] for index in decoded.decoded]
        columns = Columns(decoded.fields, [record.topic for record in records],
                          [record.partition for record in records], [record.offset for record in records])
        if self.validate is None:
            return columns
        kept = []
        for row, item in enumerate(columns.items()):
            reason = self.validate(item.event)
            if reason is not None:
                await self.dead_letter(records[row], "rejected", reason)
            else:
                kept.append(row)
        return columns if len(kept) == len(columns) else columns.select(kept)
