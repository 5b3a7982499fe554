"""The spool behind the publisher (ingest/forwarder.py): what a refusal says about Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from passpost import settings as settings_module
from passpost.ingest.forwarder import SpoolingPublisher
from passpost.ingest.publisher import NotConfirmed
from passpost.ingest.records import Record
from passpost.ingest.spool import Spool, SpoolFull, SpoolMetrics
from passpost.kafka import KafkaUnavailable


class Away:
    """A publisher whose Kafka never confirms; counts the attempts."""

    schema_id = None

    def __init__(self) -> None:
        self.attempts = 0

    delivery_seconds = 5.0

    async def publish(self, topic: str, records: Sequence[Record], keep_sends: bool = False) -> None:
        self.attempts += 1
        raise KafkaUnavailable("Kafka did not confirm within 5 s")


def test_a_full_spool_says_so_and_whether_kafka_was_tried(tmp_path: Path) -> None:
    """Defect: a full spool was reported as "Kafka did not confirm in time" when Kafka was never tried."""
    metrics = SpoolMetrics(CollectorRegistry())
    spool = Spool(str(tmp_path), 4096, metrics, segment_bytes=4096)
    spool.open()
    away = Away()
    publisher = SpoolingPublisher(settings_module.defaults(), away, spool, metrics)  # type: ignore[arg-type]
    record: Record = (b"key", b"v" * 1500, [])

    async def scenario() -> list[str]:
        refusals = []
        for _ in range(4):
            try:
                await publisher.publish("events", [record])
            except SpoolFull as full:
                refusals.append(str(full))
        return refusals

    refusals = asyncio.run(scenario())
    spool.close()
    assert away.attempts == 1  # only while the spool was empty: then records wait behind the spooled ones
    assert len(refusals) >= 1
    assert all("Kafka did not confirm" not in refusal for refusal in refusals)
    assert refusals[-1].startswith("the spool holds") and refusals[-1].endswith(
        "(records wait behind the spooled ones, Kafka not tried)")
    assert not isinstance(SpoolFull("full"), KafkaUnavailable)  # no retry loop of Kafka's takes it for an outage


class Undecided:
    """A publisher whose first send of each record stays undecided past the deadline and is
    then confirmed or refused as the test says; later sends are confirmed at once."""

    schema_id = None
    delivery_seconds = 5.0
    running = True

    def __init__(self) -> None:
        self.first_sends: list[asyncio.Future[None]] = []
        self.sent_again: list[bytes] = []

    async def publish(self, topic: str, records: Sequence[Record], keep_sends: bool = False) -> None:
        if not self.first_sends:
            loop = asyncio.get_running_loop()
            self.first_sends = [loop.create_future() for _ in records]
            raise NotConfirmed("Kafka did not confirm within 5 s", list(self.first_sends))
        self.sent_again += [value for _, value, _ in records]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def forward_with_undecided_first_sends(tmp_path: Path, outcomes: list[bool]) -> tuple[list[bytes], float, float]:
    """Publish records whose first sends are undecided, then decide them (True: Kafka confirmed);
    return what the forwarder sent again and the spool's forwarded and duplicate counts."""
    registry = CollectorRegistry()
    metrics = SpoolMetrics(registry)
    spool = Spool(str(tmp_path), 1 << 20, metrics)
    spool.open()
    kafka = Undecided()
    publisher = SpoolingPublisher(settings_module.defaults(), kafka, spool, metrics)  # type: ignore[arg-type]
    records: list[Record] = [(b"key", f"value-{n}".encode(), []) for n in range(len(outcomes))]

    async def scenario() -> None:
        await publisher.start()
        await publisher.publish("events", records)  # answered from the spool
        assert spool.held == len(records)
        await asyncio.sleep(0.3)  # the forwarder waits for the first sends: nothing is sent again yet
        assert kafka.sent_again == []
        for future, confirmed in zip(kafka.first_sends, outcomes, strict=True):
            if confirmed:
                future.set_result(None)
            else:
                future.set_exception(KafkaUnavailable("expired"))
        for _ in range(100):
            if not spool.held:
                break
            await asyncio.sleep(0.05)
        await publisher.stop()

    asyncio.run(scenario())
    forwarded = registry.get_sample_value("passpost_spool_forwarded_events_total") or 0.0
    duplicates = registry.get_sample_value("passpost_spool_duplicate_events_total") or 0.0
    return kafka.sent_again, forwarded, duplicates


def test_a_record_whose_first_send_kafka_confirms_late_is_not_sent_again(tmp_path: Path) -> None:
    """Defect: a record confirmed after its deadline reached the topic twice, once from the spool."""
    sent_again, forwarded, duplicates = forward_with_undecided_first_sends(tmp_path, [True, False, True])
    assert sent_again == [b"value-1"]  # only the one Kafka refused, and in its place in the order
    assert forwarded == 3 and duplicates == 0


def test_records_whose_first_sends_fail_are_all_sent_again_in_order(tmp_path: Path) -> None:
    sent_again, forwarded, duplicates = forward_with_undecided_first_sends(tmp_path, [False, False, False])
    assert sent_again == [b"value-0", b"value-1", b"value-2"]
    assert forwarded == 3 and duplicates == 0
