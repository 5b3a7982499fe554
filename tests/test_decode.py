"""Records to a batch (consumers/runtime/decode.py): events or columns, and dead letters first."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from passpost.consumers.runtime.decode import Decode
from passpost.schemas.event import PassPostback
from tests.fake_source import TOPIC, Sink, event, record

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class Refusing(Sink):
    def validate(self, event: PassPostback) -> str | None:
        return "bad serial" if (event.serial_number or "").startswith("bad") else None


class RefusingColumns(Refusing):
    columnar = True


def run(decode_step: Decode, fetched: dict[TopicPartition, list[ConsumerRecord]]):  # type: ignore[no-untyped-def]
    return asyncio.run(decode_step(fetched))


def fetched() -> dict[TopicPartition, list[ConsumerRecord]]:
    return {P0: [record(0, 0, event(serial_number="A")), record(0, 1, b"not avro"),
                 record(0, 2, event(serial_number="bad-1"))],
            P1: [record(1, 7, event(serial_number="B"))]}


def test_undecodable_and_refused_records_are_dead_lettered_and_their_offsets_still_move() -> None:
    letters: list[tuple[int, int, str]] = []

    async def dead_letter(kept: ConsumerRecord, error: str, detail: str) -> None:
        letters.append((kept.partition, kept.offset, error))

    for consumer in (Refusing(), RefusingColumns()):
        letters.clear()
        batch, records = run(Decode(consumer, dead_letter, None), fetched())
        assert [e.serial_number for e in batch.events] == ["A", "B"], type(consumer).__name__
        assert [(item.partition, item.offset) for item in batch.items] == [(0, 0), (1, 7)]
        assert batch.next_offsets == {P0: 3, P1: 8}
        assert letters == [(0, 1, "undecodable"), (0, 2, "rejected")]
        assert records.at(0, 2).offset == 2


def test_a_columnar_consumer_gets_columns_decoded_without_an_event_per_record() -> None:
    async def dead_letter(kept: ConsumerRecord, error: str, detail: str) -> None:
        raise AssertionError("nothing to dead-letter")

    events = [event(serial_number="A"), event(serial_number="B")]
    batch, _ = run(Decode(RefusingColumns(), dead_letter, None), {P0: [record(0, n, e) for n, e in enumerate(events)]})
    assert batch._items is None  # no item per record until asked for  # noqa: SLF001
    assert batch.columns.fields["serial_number"] == ["A", "B"]
    assert batch.events == events
