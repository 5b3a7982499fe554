"""The consumer runtime against the real broker, through the helper users test with."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from passpost.consumers import testing
from passpost.consumers.runtime import Batch, Consumer, group_id
from passpost.schemas.event import PassPostback

pytestmark = pytest.mark.kafka


class Collect(Consumer):
    """Keeps what it is given; refuses serial numbers starting with "bad"; fails its first writes if told."""

    name = "collect"

    def __init__(self, settings, failures: int = 0) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.written: list[PassPostback] = []
        self.failures = failures

    def validate(self, event: PassPostback) -> str | None:
        return "bad serial" if (event.serial_number or "").startswith("bad") else None

    async def write(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink down")
        self.written.extend(batch.events)


def test_poison_and_rejected_records_go_to_the_consumers_dead_letter_topic(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    good = [testing.event() for _ in range(5)]
    testing.produce(settings, [good[0], b"not avro at all", good[1], testing.event(serial_number="bad-1"), *good[2:]])
    consumer = Collect(settings)
    result = testing.consume(consumer, settings)

    assert [event.event_id for event in consumer.written] == [event.event_id for event in good]
    letters = sorted(result.dead_letters, key=lambda letter: int(letter.headers_dict["offset"]))
    assert [(letter.headers_dict["error"], letter.headers_dict["offset"]) for letter in letters] == [
        ("undecodable", "1"), ("rejected", "3")]
    assert letters[0].value == b"not avro at all"  # the original bytes
    assert letters[1].headers_dict["detail"] == "bad serial"
    assert letters[0].headers_dict["topic"] == settings.events_topic


def test_offsets_are_committed_after_the_write_so_a_restart_reads_only_new_events(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=3)
    first = [testing.event() for _ in range(30)]
    testing.produce(settings, first)
    testing.consume(Collect(settings), settings)

    later = [testing.event() for _ in range(7)]
    testing.produce(settings, later)
    again = Collect(settings)
    testing.consume(again, settings)
    assert sorted(event.event_id for event in again.written) == sorted(event.event_id for event in later)


def test_a_failing_sink_is_retried_without_committing_and_nothing_is_lost(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    events = [testing.event() for _ in range(10)]
    testing.produce(settings, events)
    consumer = Collect(settings, failures=3)
    result = testing.consume(consumer, settings)

    assert sorted(event.event_id for event in consumer.written) == sorted(event.event_id for event in events)
    registry = result.runner.metrics.registry
    assert registry.get_sample_value("passpost_consumer_retries_total", {"consumer": "collect"}) == 3
    assert registry.get_sample_value("passpost_consumer_events_total", {"consumer": "collect"}) == 10


def test_health_and_metrics_endpoints(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    testing.produce(settings, [testing.event(), b"junk"])

    async def scenario() -> tuple[int, int, str, int]:
        from passpost.consumers.runtime import Runner

        runner = Runner(Collect(settings), settings, health_port=0)
        task = asyncio.create_task(runner.run())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.health_port}", timeout=5) as client:
            while runner.metrics.registry.get_sample_value(
                    "passpost_consumer_batches_total", {"consumer": "collect"}) != 1.0:
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{runner.health_port}"
            healthz = (await client.get(f"{url}/healthz")).status_code
            readyz = (await client.get(f"{url}/readyz")).status_code
            metrics = (await client.get(f"{url}/metrics")).text
            runner.stop()
            await task
            return healthz, readyz, metrics, 0

    healthz, readyz, metrics, _ = asyncio.run(scenario())
    assert (healthz, readyz) == (200, 200)
    for name in ("passpost_consumer_events_total", "passpost_consumer_batches_total",
                 "passpost_consumer_batch_duration_seconds_bucket", "passpost_consumer_lag",
                 "passpost_consumer_retries_total"):
        assert name in metrics
    assert 'passpost_consumer_dead_letters_total{consumer="collect",reason="undecodable"} 1.0' in metrics
    assert f'passpost_consumer_lag{{consumer="collect",partition="0",topic="{settings.events_topic}"}} 0.0' in metrics


def test_group_id_is_derived_from_the_name_unless_set(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    assert group_id(settings.replace(consumer_group=None), "analytics") == "passpost-analytics"
    assert group_id(settings, "analytics") == settings.consumer_group
