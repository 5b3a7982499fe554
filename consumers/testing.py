"""Test a consumer against a real broker in a few lines.

    from passpost.consumers import testing

    def test_my_consumer(kafka_bootstrap):
        settings = testing.settings_for(kafka_bootstrap)        # a fresh topic and group
        testing.produce(settings, [testing.event(serial_number="S1"), b"not avro"])
        consumer = MyConsumer(settings)
        result = testing.consume(consumer, settings)          # until every record is handled
        assert [letter.headers_dict["error"] for letter in result.dead_letters] == ["undecodable"]

``consume`` runs the real runtime (decode, dead letters, commits, the sink's offsets)
until the consumer has handled every record the topic held when it was called.

The ``kafka_bootstrap`` fixture comes from the development package passpost-dev, whose pytest
plugin (``passpost_dev/pytest_plugin.py``) is registered under ``pytest11``: installing
passpost-dev (``pip install passpost-dev``, or the ``test`` extra of a package ``passpost new
consumer`` wrote) is enough, no ``conftest.py``. It is one broker per test session: the one
``PASSPOST_KAFKA_BOOTSTRAP_SERVERS`` names, else a local KRaft broker run from Kafka's jars (Java 17+;
the jars are fetched from Maven Central once, into ``~/.cache/passpost``). Tests share it, and
``settings_for`` gives each its own topic and consumer group.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from passpost import settings as settings_module
from passpost import tracing
from passpost.consumers.runtime import Consumer, Runner, dead_letter_topic
from passpost.kafka import client_options, create_topics, topic_bounds
from passpost.schemas.codec import encode
from passpost.schemas.event import PassPostback, classify
from passpost.settings import Settings


def settings_for(bootstrap: str, partitions: int = 1, **overrides: Any) -> Settings:
    """Default settings on ``bootstrap`` with a topic and consumer group no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers=bootstrap, events_topic=f"test-events-{suffix}", consumer_group=f"test-{suffix}",
        topic_partitions=partitions, **overrides)
    asyncio.run(create_topics(settings, [settings.events_topic]))
    return settings


def event(**fields: Any) -> PassPostback:
    """A valid event; every field can be overridden. Distinct calls give distinct event ids."""
    values: dict[str, Any] = {
        "event_id": uuid.uuid4().hex, "origin": "GENERATE_PASS", "status_code": "N801",
        "received_at": datetime.now(UTC), "serial_number": uuid.uuid4().hex[:8],
    }
    values.update(fields)
    values.setdefault("outcome", classify(values["status_code"]))
    return PassPostback(**values)


def produce(settings: Settings, records: Iterable[PassPostback | bytes]) -> None:
    """Produce events (encoded by the project's codec, keyed as the ingress keys them) or raw bytes."""

    async def send() -> None:
        producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
        await producer.start()
        try:
            pending = [await producer.send(settings.events_topic, *_value_key(record)) for record in records]
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    asyncio.run(send())


def _value_key(record: PassPostback | bytes) -> tuple[bytes, bytes | None]:
    if isinstance(record, PassPostback):
        return encode(record), record.kafka_key()
    return record, None


@dataclass
class Letter:
    value: bytes
    headers_dict: dict[str, str]


@dataclass
class Result:
    runner: Runner
    dead_letters: list[Letter] = field(default_factory=list)
    # With consume(..., trace=True): every span the run made (opentelemetry.sdk.trace.ReadableSpan).
    spans: list[Any] = field(default_factory=list)

    def batch_spans(self) -> list[Any]:
        """The runtime's span of each batch (``process <topic>``); a sink's own spans are their children."""
        return [span for span in self.spans if span.name.startswith("process ")]

    def children_of(self, parent: Any) -> list[Any]:
        """The spans made inside ``parent`` (a sink's transaction, a delivery, a dead letter)."""
        return [span for span in self.spans
                if span.parent is not None and span.parent.span_id == parent.context.span_id]


def consume(consumer: Consumer, settings: Settings, timeout: float = 60.0, *, trace: bool = False) -> Result:
    """Run ``consumer`` until it handled every record now on the topic; return its dead letters.

    ``trace=True`` runs it with tracing on, every span recorded in ``Result.spans`` (no exporter): a
    consumer's test can assert the runtime's batch span and its own spans under it::

        result = testing.consume(consumer, settings, trace=True)
        [batch] = result.batch_spans()
        assert [span.name for span in result.children_of(batch)] == ["INSERT my-store"]
    """
    if trace:
        with tracing.record_spans() as spans:
            result = consume(consumer, settings, timeout)
        result.spans = list(spans)
        return result

    async def run() -> Result:
        beginning, end = await topic_bounds(settings)
        todo = {tp: offset for tp, offset in end.items() if offset > beginning[tp]}
        runner = Runner(consumer, settings, health_port=0)
        deadline = time.monotonic() + timeout

        def finished() -> bool:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer handled {runner.written} of {todo} within {timeout} s")
            return all(runner.written.get(tp, 0) >= offset for tp, offset in todo.items())

        await runner.run(until=finished)
        return Result(runner, await read_dead_letters(settings, consumer.name))

    return asyncio.run(run())


async def read_dead_letters(settings: Settings, name: str, timeout: float = 5.0) -> list[Letter]:
    """Dead letters of consumer ``name`` that came from ``settings.events_topic``."""
    reader = AIOKafkaConsumer(dead_letter_topic(name), **client_options(settings), group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    letters: list[Letter] = []
    try:
        end = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not reader.assignment():
                await asyncio.sleep(0.05)
                continue
            end = end or await reader.end_offsets(list(reader.assignment()))
            if all([await reader.position(tp) >= offset for tp, offset in end.items()]):
                break
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    headers = {key: value.decode() for key, value in record.headers or ()}
                    if headers.get("topic") == settings.events_topic:
                        letters.append(Letter(record.value, headers))
    finally:
        await reader.stop()
    return letters
