"""Kafka helpers for tests: create topics, read a topic back, name topics uniquely.

Each helper exists as a coroutine (``*_async``) for async tests and as a plain function
for synchronous ones. The plain functions work even while an event loop is running in
the calling thread (they then run their own loop in a worker thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

T = TypeVar("T")


def unique_topic(prefix: str = "test") -> str:
    """A topic name no other test uses, since tests share one broker per session."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topics_async(
    bootstrap: str, names: Iterable[str], partitions: int = 1, *, timeout: float = 30.0, replication_factor: int = 1
) -> list[str]:
    """Create ``names`` (existing ones are fine) and wait until every partition has a
    leader, so that a producer started right after does not race the broker."""
    topics = list(names)
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        try:
            response = await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor) for name in topics]
            )
        except TopicAlreadyExistsError:
            pass
        else:
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = topic_error[2] if len(topic_error) > 2 else ""
                    raise for_code(code)(f"creating topic {name}: {message}")
        await _wait_for_leaders(admin, topics, deadline)
    finally:
        await admin.close()
    return topics


async def recreate_topic_async(bootstrap: str, name: str, partitions: int = 1, *, timeout: float = 60.0) -> None:
    """Delete ``name`` and create it again: another topic (a new topic id) under the same name."""
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        await admin.delete_topics([name])
        while name in await admin.list_topics():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {name} was not deleted")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    while True:  # the broker may still be removing the old one's partitions
        try:
            await create_topics_async(bootstrap, [name], partitions, timeout=max(1.0, deadline - time.monotonic()))
            return
        except KafkaError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


def recreate_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    run_sync(recreate_topic_async(bootstrap, name, partitions))


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], deadline: float) -> None:
    while True:
        described = await admin.describe_topics(topics)
        ready = all(
            topic["error_code"] == 0
            and topic["partitions"]
            and all(partition["leader"] >= 0 for partition in topic["partitions"])
            for topic in described
        )
        if ready and len(described) == len(topics):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics {topics} have no leaders yet: {described}")
        await asyncio.sleep(0.05)


async def read_all_async(
    bootstrap: str, topic: str, expected: int | None = None, timeout: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning with a fresh, group-less consumer.

    With ``expected`` it reads until that many records arrived; without, until the end
    offsets the topic had when reading began. Either way it returns what it has after
    ``timeout`` seconds instead of raising, so a test's assertion shows what arrived.
    Records come partition by partition in offset order, headers included.
    """
    deadline = time.monotonic() + timeout
    # Subscribed without a group, the consumer is given every partition of the topic and,
    # having no committed offsets, starts each at its beginning.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Only committed records: what a downstream consumer of passpost would see.
        isolation_level="read_committed",
    )
    await asyncio.wait_for(consumer.start(), timeout)
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = await _assigned(consumer, topic, deadline)
        end = await consumer.end_offsets(partitions) if expected is None else None
        while (remaining := deadline - time.monotonic()) > 0:
            if expected is not None and len(records) >= expected:
                break
            if end is not None and await _reached(consumer, end):
                break
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda record: (record.partition, record.offset))


async def _reached(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
    for partition, offset in offsets.items():
        if await consumer.position(partition) < offset:
            return False
    return True


async def _assigned(consumer: AIOKafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    while not (partitions := consumer.assignment()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no partitions of topic {topic} were assigned")
        await asyncio.sleep(0.05)
    return sorted(partitions)


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, *, timeout: float = 30.0,
                  replication_factor: int = 1) -> list[str]:
    return run_sync(create_topics_async(bootstrap, names, partitions, timeout=timeout,
                                        replication_factor=replication_factor))


def read_all(
    bootstrap: str, topic: str, expected: int | None = None, timeout: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    return run_sync(read_all_async(bootstrap, topic, expected, timeout))


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, also from code that already runs inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
