"""``passpost dlq replay``: send dead letters through the ingress's parsing again.

After a fix (a new element the parser now knows, a relaxed rule), bodies that were
refused can become events. A replay reads the dead-letter topic up to the end it sees at
start, runs each body through exactly the parsing the ingress uses, and produces the
events of those that now pass, with the ``received_at`` of the original request. The
event ids are content-derived, so an event is the same whether it came in live or by
replay, and consumers de-duplicate it like any re-delivery.

Progress is the consumer group ``passpost-dlq-replay``: offsets are committed only after
Kafka confirmed the events of everything before them, so an interrupted replay resumes
and a finished one does not replay the same letters twice. Letters that still fail stay
where they are (the topic is never rewritten); a later replay after the next fix needs
``--from-beginning``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from passpost.errors import describe_error
from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.publisher import Publisher
from passpost.ingest.records import records_of
from passpost.ingest.refusal import Rejected
from passpost.kafka import KafkaUnavailable, client_options, max_record_bytes, start_client
from passpost.settings import Settings

log = logging.getLogger("passpost.replay")

GROUP_ID = "passpost-dlq-replay"


@dataclass
class ReplayReport:
    letters: int = 0
    replayed: int = 0
    events: int = 0
    still_rejected: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        rejected = ", ".join(f"{code} {count}" for code, count in sorted(self.still_rejected.items())) or "none"
        return (f"{self.letters} dead letters read; {self.replayed} became {self.events} events; "
                f"still rejected: {rejected}")


def _header(record: ConsumerRecord, name: str) -> str:
    for key, value in record.headers or ():
        if key == name:
            text: str = value.decode("utf-8", "replace")
            return text
    return ""


def _received_at(record: ConsumerRecord) -> datetime:
    try:
        value = datetime.fromisoformat(_header(record, "received_at"))
        if value.tzinfo is not None:
            return value
    except ValueError:
        pass
    return datetime.fromtimestamp(record.timestamp / 1000, timezone.utc)


async def replay(settings: Settings, *, from_beginning: bool = False, dry_run: bool = False) -> ReplayReport:
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=GROUP_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.max_body_bytes * 2,
    )
    publisher = Publisher(settings, IngestMetrics())
    await start_client(consumer, settings)
    try:
        if not dry_run:
            await publisher.start()
        if settings.dead_letter_topic not in await consumer.topics():
            raise KafkaUnavailable(f"topic {settings.dead_letter_topic} does not exist")
        consumer.subscribe([settings.dead_letter_topic])
        partitions = await _assignment(consumer)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        report = ReplayReport()
        while True:
            remaining = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not remaining:
                break
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                records = [r for r in records if r.offset < end[tp]]
                if records:
                    await _replay_batch(records, report, publisher, settings, dry_run)
                    if not dry_run:
                        await consumer.commit({tp: records[-1].offset + 1})
        return report
    except KafkaError as error:
        raise KafkaUnavailable(f"replay stopped: {describe_error(error)}") from None
    finally:
        await publisher.stop()
        await consumer.stop()


async def _assignment(consumer: AIOKafkaConsumer, timeout: float = 60.0) -> list[TopicPartition]:
    # Joining the group hands this (only) member every partition, at its committed offset.
    deadline = asyncio.get_running_loop().time() + timeout
    while not consumer.assignment():
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaUnavailable(f"consumer group {GROUP_ID} assigned no partition within {timeout:g} s")
        await asyncio.sleep(0.1)
    return sorted(consumer.assignment())


async def _replay_batch(
    records: list[ConsumerRecord], report: ReplayReport, publisher: Publisher, settings: Settings, dry_run: bool
) -> None:
    pending = []
    for record in records:
        report.letters += 1
        body = record.value or b""
        headers = [("request_id", _header(record, "request_id").encode()), ("replayed_from", _offset_of(record))]
        try:
            # The ingress's own pipeline: registry-framed like its events when a schema registry is set.
            made = records_of(body, _header(record, "content_type"), _received_at(record), headers,
                              max_items=settings.max_items, max_record=max_record_bytes(settings),
                              schema_id=publisher.schema_id)
        except Rejected as rejected:
            report.still_rejected[rejected.code] += 1
            continue
        report.replayed += 1
        report.events += len(made.events)
        pending.extend(made.records)
    if pending and not dry_run:
        await publisher.publish(settings.events_topic, pending)


def _offset_of(record: ConsumerRecord) -> bytes:
    return f"{record.topic}/{record.partition}/{record.offset}".encode()
