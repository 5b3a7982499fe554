"""The consumer runtime against the real broker, through the helper users test with."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from passpost import settings as settings_module
from passpost.consumers import testing
from passpost.consumers.runtime import Batch, Columns, Consumer, ExactlyOnceConsumer, PoisonBatch, Runner, group_id
from passpost.consumers.runtime.identity import ForeignOffsets, TopicIdentity
from passpost.errors import ConfigurationError
from passpost.kafka import create_topics
from passpost.schemas.event import PassPostback
from tests.kafka_helpers import unique_topic
from tests.live import free_port

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


class CollectColumns(Collect):
    """Asks for columns (``Consumer.columnar``); refuses as poison a batch holding serial number "poison"."""

    columnar = True

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        if "poison" in batch.columns.fields["serial_number"]:
            raise PoisonBatch("no poison")
        self.batches.append(batch)
        self.written.extend(batch.events)


def test_a_columnar_consumer_gets_the_same_events_as_columns_and_the_same_dead_letters(kafka_bootstrap: str) -> None:
    """Decoded field by field instead of one PassPostback each: the same events (items built on demand), the
    undecodable, rejected (validate) and poison records dead-lettered as for any consumer."""
    settings = testing.settings_for(kafka_bootstrap, consumer_batch_size=100)
    good = [testing.event(serial_number=f"S{n}", extra={"K": str(n)} if n % 2 else {}) for n in range(6)]
    testing.produce(settings, [good[0], b"not avro at all", good[1], testing.event(serial_number="bad-1"),
                               good[2], testing.event(serial_number="poison"), *good[3:]])
    consumer = CollectColumns(settings)
    result = testing.consume(consumer, settings)

    assert consumer.written == good
    letters = sorted(result.dead_letters, key=lambda letter: int(letter.headers_dict["offset"]))
    assert [(letter.headers_dict["error"], letter.headers_dict["offset"]) for letter in letters] == [
        ("undecodable", "1"), ("rejected", "3"), ("poison", "5")]
    # After the poison, the batch went in event by event; the next ones come whole, as decoded columns.
    later = [testing.event(serial_number=f"L{n}", generated_at=None) for n in range(3)]
    testing.produce(settings, later)
    again = CollectColumns(settings)
    testing.consume(again, settings)
    assert again.written == later and [len(batch) for batch in again.batches] == [3]
    columns = again.batches[0].columns
    assert columns == Columns.of(columns.items())
    assert columns.fields["received_at"] == [event.to_record()["received_at"] for event in later]  # microseconds
    assert columns.fields["generated_at"] == [None] * 3 and columns.fields["serial_number"] == ["L0", "L1", "L2"]


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


class SlowToLoad(Collect, ExactlyOnceConsumer):
    """Stores offsets and takes a while to load them, as a sink that asks a database or Kafka does."""

    async def check_topic(self, topic: str, identity: TopicIdentity) -> None:
        pass
    loaded_at = 0.0

    async def load_offsets(self, partitions):  # type: ignore[no-untyped-def]
        await asyncio.sleep(1.5)  # aiokafka is already fetching the partitions meanwhile
        self.loaded_at = time.monotonic()
        return {}


def test_assignment_hands_no_record_twice(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=2)
    events = [testing.event() for _ in range(3)]
    testing.produce(settings, events)
    consumer = SlowToLoad(settings)
    runner = Runner(consumer, settings, health_port=0)
    give_up = time.monotonic() + 60

    def settled() -> bool:
        # Long enough after the start positions were applied for a record handed twice to show.
        return time.monotonic() > give_up or bool(consumer.loaded_at and time.monotonic() - consumer.loaded_at > 3)

    asyncio.run(runner.run(until=settled))
    assert sorted(event.event_id for event in consumer.written) == sorted(event.event_id for event in events)
    registry = runner.metrics.registry
    assert registry.get_sample_value("passpost_consumer_events_total", {"consumer": "collect"}) == 3


def test_a_topic_created_after_the_consumer_started_is_consumed_within_seconds(
        kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = unique_topic("late")
    settings = settings_module.defaults().replace(kafka_bootstrap_servers=kafka_bootstrap, events_topic=topic,
                                                  consumer_group=f"group-{topic}", topic_partitions=2)
    consumer = Collect(settings)

    async def scenario() -> tuple[list[tuple[int, str]], float, tuple[int, str], str]:
        runner = Runner(consumer, settings, health_port=0)
        task = asyncio.create_task(runner.run())
        while not runner.health_port:  # the real port, once the health server is up
            await asyncio.sleep(0.01)
        before: list[tuple[int, str]] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.health_port}", timeout=5) as client:
            for _ in range(6):  # three seconds without the topic
                await asyncio.sleep(0.5)
                answer = await client.get("/readyz")
                before.append((answer.status_code, answer.text))
            await create_topics(settings, [topic])
            created = asyncio.get_running_loop().time()
            await asyncio.to_thread(testing.produce, settings, [testing.event()])
            while not consumer.written and asyncio.get_running_loop().time() - created < 30:
                await asyncio.sleep(0.05)
            took = asyncio.get_running_loop().time() - created
            answer = await client.get("/readyz")
            metrics = (await client.get("/metrics")).text
            runner.stop()
            await task
            return before, took, (answer.status_code, answer.text), metrics

    with caplog.at_level("INFO", logger="passpost.consumer"):
        before, took, after, metrics = asyncio.run(scenario())
    assert {status for status, _ in before} == {503}
    assert before[-1][1] == f"not ready: topic {topic} does not exist yet\n"
    assert took < 10, f"consumed {took:.1f} s after the topic's creation"
    assert after == (200, "ready\n")
    assert 'passpost_consumer_ready{consumer="collect"} 1.0' in metrics
    assert 'passpost_consumer_seconds_since_commit{consumer="collect"}' in metrics
    waits = [record for record in caplog.records if "waiting for topic" in record.getMessage()]
    assert len(waits) == 1  # said once, not at every look


def test_a_taken_health_port_is_one_line_naming_the_setting(kafka_bootstrap: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_CONSUMER_PORT": str(port)}
        result = subprocess.run([sys.executable, "-m", "passpost", "consume", "analytics"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"passpost: error: PASSPOST_CONSUMER_PORT: port {port} is already in use (127.0.0.1:{port}, "
        "for /readyz and /metrics)"]


class RecreatedMeanwhile(Collect, ExactlyOnceConsumer):
    """Stores offsets; its topic is found re-created at the first assignment, after the start's check."""

    async def load_offsets(self, partitions):  # type: ignore[no-untyped-def]
        return {}

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.checked: list[TopicIdentity] = []

    async def check_topic(self, topic: str, identity: TopicIdentity) -> None:
        self.checked.append(identity)
        if len(self.checked) > 1:
            raise ForeignOffsets("offsets of another incarnation")


def test_offsets_of_another_incarnation_found_at_an_assignment_stop_the_consumer(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    testing.produce(settings, [testing.event()])
    consumer = RecreatedMeanwhile(settings)
    with pytest.raises(ForeignOffsets):
        asyncio.run(asyncio.wait_for(Runner(consumer, settings, health_port=0).run(), 60))
    assert consumer.written == []  # nothing reached the sink
    assert len(consumer.checked) == 2 and consumer.checked[0] == consumer.checked[1]


def test_settings_the_kafka_client_refuses_close_the_health_port_and_say_so_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Defect: the health port was bound outside the try/finally, so a failure building the client left it open."""
    bad_pem = tmp_path / "ca.pem"
    bad_pem.write_text("not a certificate\n")
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers="127.0.0.1:9", kafka_security_protocol="SSL", kafka_ssl_ca_file=str(bad_pem))
    port = free_port()
    with pytest.raises(ConfigurationError) as raised:
        asyncio.run(asyncio.wait_for(Runner(Collect(settings), settings, health_port=port).run(), 30))
    assert str(raised.value).startswith(f"PASSPOST_KAFKA_SSL_CA_FILE: {bad_pem} is not a CA bundle in PEM")
    with socket.socket() as again:  # closed: it can be bound at once
        again.bind(("127.0.0.1", port))
