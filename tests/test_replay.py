"""`passpost dlq replay` (ingest/replay.py): dead letters that now parse become events, once."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import fastavro
import pytest
from aiokafka import AIOKafkaProducer

from passpost import settings as settings_module
from passpost.ingest.replay import replay
from passpost.settings import Settings
from tests.kafka_helpers import create_topics, read_all

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_bytes()


async def put_dead_letters(settings: Settings, letters: list[tuple[bytes, str, str]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for body, received_at, request_id in letters:
            await producer.send_and_wait(settings.dead_letter_topic, body, headers=[
                ("error", b"invalid_xml"), ("detail", b"old parser"), ("received_at", received_at.encode()),
                ("content_type", b"application/xml"), ("request_id", request_id.encode()),
            ])
    finally:
        await producer.stop()


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    s = settings_module.defaults().replace(
        kafka_bootstrap_servers=kafka_bootstrap, events_topic=f"events-{suffix}", dead_letter_topic=f"dlq-{suffix}"
    )
    create_topics(kafka_bootstrap, [s.events_topic, s.dead_letter_topic])
    return s


def test_replay_turns_letters_that_now_parse_into_events_once(settings: Settings) -> None:
    asyncio.run(put_dead_letters(settings, [
        (VENDOR_EXAMPLE, "2026-11-20T10:00:01+00:00", "req-01"),  # refused by an older version, fine now
        (b"<ORDER/>", "2026-11-20T10:00:02+00:00", "req-02"),      # still not a postback
    ]))

    dry = asyncio.run(replay(settings, dry_run=True))
    assert (dry.letters, dry.replayed, dry.events) == (2, 1, 1)
    assert read_all(settings.kafka_bootstrap_servers, settings.events_topic, timeout=1) == []

    report = asyncio.run(replay(settings))
    assert (report.letters, report.replayed, report.events) == (2, 1, 1)
    assert dict(report.still_rejected) == {"not_a_postback": 1}
    [record] = read_all(settings.kafka_bootstrap_servers, settings.events_topic, expected=1)
    event = fastavro.schemaless_reader(io.BytesIO(record.value[10:]), SCHEMA)
    assert event["serial_number"] == "5294CE37878AE-112613-113711"
    assert event["received_at"].isoformat() == "2026-11-20T10:00:01+00:00"
    assert dict(record.headers)["request_id"] == b"req-01"

    again = asyncio.run(replay(settings))  # the group's offsets moved: nothing twice
    assert again.letters == 0
    assert len(read_all(settings.kafka_bootstrap_servers, settings.events_topic, timeout=1)) == 1

    everything = asyncio.run(replay(settings, from_beginning=True, dry_run=True))
    assert everything.letters == 2
