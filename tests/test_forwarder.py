"""The spool behind the publisher (ingest/forwarder.py): what a refusal says about Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from passpost import settings as settings_module
from passpost.ingest.forwarder import SpoolingPublisher
from passpost.ingest.records import Record
from passpost.ingest.spool import Spool, SpoolFull, SpoolMetrics
from passpost.kafka import KafkaUnavailable


class Away:
    """A publisher whose Kafka never confirms; counts the attempts."""

    schema_id = None

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, topic: str, records: Sequence[Record], late: Callable[[], None] | None = None) -> None:
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
