"""aiokafka against librdkafka (confluent-kafka) with completions handed to the event loop
in batches, alternated in one run (issue 22).

Each candidate runs ``--concurrency`` tasks on uvloop, each publishing one record of the
vendor's example's size (keyed like an event) and awaiting its confirmation, over and
over for ``--duration`` seconds, as the ingress's requests do; the process's CPU time
(librdkafka's threads included) divided by the confirmed records is the CPU per record.
Both produce with acks=all, idempotence, lz4, linger 0 (``--linger-ms``).

* ``aiokafka``: ``AIOKafkaProducer.send`` and its future, as ``ingest/publisher.py`` does;
* ``rdkafka-thread``: ``confluent_kafka.Producer.produce`` from the loop; one poll thread
  collects the delivery reports of each ``poll`` and resolves them with one
  ``call_soon_threadsafe`` per batch (``bench/rdkafka_producer.py``);
* ``rdkafka-tick``: the same, but the loop polls (``poll(0)``) every 0.5 ms while records
  are outstanding, so no report crosses threads.

It also checks that librdkafka's ``murmur2_random`` puts every keyed record on the partition
``ingest/partitioner.py`` computes.

    python -m bench.producers --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.ingest import kafka_process, log

RECORD = os.urandom(560)  # about one event of the vendor's example
LINGER_MS = 0  # --linger-ms


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def drive(publish: Callable[[bytes, bytes], Awaitable[Any]], concurrency: int, seconds: float) -> int:
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal done
        sequence = 0
        while time.monotonic() < stop_at:
            sequence += 1
            await publish(b"pass-%d-%d" % (index, sequence), RECORD)
            done += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


async def with_aiokafka(bootstrap: str, topic: str, concurrency: int, seconds: float) -> tuple[int, float]:
    from aiokafka import AIOKafkaProducer

    from passpost.ingest.partitioner import partition_for

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                compression_type="lz4", linger_ms=LINGER_MS, partitioner=partition_for,
                                max_batch_size=64 * 1024)
    await producer.start()
    try:
        async def publish(key: bytes, value: bytes) -> None:
            await (await producer.send(topic, value, key=key, headers=[("request_id", b"x" * 32)]))

        await drive(publish, concurrency, 1.0)
        before = cpu()
        done = await drive(publish, concurrency, seconds)
        return done, cpu() - before
    finally:
        await producer.stop()


async def with_rdkafka(mode: str, bootstrap: str, topic: str, concurrency: int,
                       seconds: float) -> tuple[int, float]:
    from bench.rdkafka_producer import BatchedProducer

    producer = BatchedProducer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                                "compression.type": "lz4", "linger.ms": LINGER_MS, "partitioner": "murmur2_random"},
                               asyncio.get_running_loop(), mode=mode)
    try:
        async def publish(key: bytes, value: bytes) -> None:
            await producer.produce(topic, value, key, [("request_id", b"x" * 32)])

        await drive(publish, concurrency, 1.0)
        before = cpu()
        done = await drive(publish, concurrency, seconds)
        return done, cpu() - before
    finally:
        await producer.close(10.0)


def check_partitions(bootstrap: str, topic: str, partitions: int) -> int:
    """Keyed records through librdkafka: each must land where partition_for puts it."""
    from confluent_kafka import Producer

    from passpost.ingest.partitioner import partition_for

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    wrong: list[bytes] = []

    def report(error: Any, message: Any) -> None:
        expected = partition_for(message.key(), list(range(partitions)), [])
        if error is not None or message.partition() != expected:
            wrong.append(message.key())

    keys = [uuid.uuid4().hex.encode() for _ in range(500)] + [b"", b"a", b"ab", b"abc", "é".encode()]
    for key in keys:
        producer.produce(topic, b"v", key=key, on_delivery=report)
    producer.flush(30)
    if wrong:
        raise SystemExit(f"librdkafka put {len(wrong)} keys on another partition than partition_for, e.g. {wrong[:3]}")
    return len(keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--linger-ms", type=int, default=0, help="both producers' linger (default 0, the ingress's)")
    options = parser.parse_args(argv)
    global LINGER_MS
    LINGER_MS = options.linger_ms
    candidates: dict[str, Callable[..., Awaitable[tuple[int, float]]]] = {
        "aiokafka": with_aiokafka,
        "rdkafka-thread": functools.partial(with_rdkafka, "thread"),
        "rdkafka-tick": functools.partial(with_rdkafka, "tick"),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    with kafka_process() as (bootstrap, _kafka):
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"bench-producers-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(topic, 6, 1)]).values():
            future.result(30)
        time.sleep(1)
        log(f"partitioning: {check_partitions(bootstrap, topic, 6)} keys on the partition partition_for computes")
        names = list(candidates)
        for round_ in range(1, options.rounds + 1):
            shift = (round_ - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                done, seconds = uvloop.run(candidates[name](bootstrap, topic, options.concurrency, options.duration))
                us = 1e6 * seconds / max(done, 1)
                results[name].append((us, done / options.duration))
                log(f"round {round_} {name}: {done / options.duration:.0f} records/s, {us:.1f} µs CPU per record")
    print("\n| producer | µs CPU per confirmed record (rounds) | median | records/s (rounds) |")
    print("| --- | --- | ---: | --- |")
    for name, rows in results.items():
        median = statistics.median(us for us, _ in rows)
        print(f"| {name} | {' / '.join(f'{us:.1f}' for us, _ in rows)} | {median:.1f} | "
              f"{' / '.join(f'{rate:.0f}' for _, rate in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
