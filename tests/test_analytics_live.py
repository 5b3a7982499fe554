"""`passpost consume analytics` as a real process: SIGKILL, a PostgreSQL outage, a rebalance.

Exactly once is checked by counts that must match to the event: the store's rows equal
the records its stored offsets cover, and a restarted consumer writes exactly the rest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from passpost.consumers import testing
from passpost.consumers.analytics.store import open_store
from passpost.settings import Settings
from tests.live import free_port
from tests.postgres_fixtures import PostgresServer, wait_for

pytestmark = pytest.mark.kafka


@dataclass
class LiveConsumer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def metric(self, name: str) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1.0
        match = re.search(rf'^{name}{{consumer="analytics"}} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@contextmanager
def live_consumer(settings: Settings, log: Path, **env: str) -> Iterator[LiveConsumer]:
    port = free_port()
    environ = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "PASSPOST_EVENTS_TOPIC": settings.events_topic, "PASSPOST_CONSUMER_GROUP": str(settings.consumer_group),
               "PASSPOST_ANALYTICS_DSN": settings.analytics_dsn, "PASSPOST_CONSUMER_PORT": str(port),
               "PASSPOST_CONSUMER_BATCH_SIZE": "100", "PASSPOST_CONSUMER_RETRY_MAX_SECONDS": "0.5", **env}
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "consume", "analytics"], env=environ,
                                   stdout=sink, stderr=sink)
    consumer = LiveConsumer(process, port, log)
    try:
        wait_for(lambda: consumer.metric("passpost_consumer_batches_total") >= 0 or process.poll() is not None,
                 30, message="consumer did not serve /metrics")
        assert process.poll() is None, log.read_text()
        yield consumer
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def store_state(dsn: str) -> tuple[int, int, int]:
    """(rows, distinct event ids, records covered by the stored offsets)."""
    store = open_store(dsn)
    try:
        rows, distinct = store._execute("SELECT count(*), count(DISTINCT event_id) FROM pass_postbacks")[0]
        covered = store._execute("SELECT coalesce(sum(next_offset), 0) FROM passpost_offsets")[0][0]
        return int(rows), int(distinct), int(covered)
    finally:
        store.close()


@pytest.fixture(params=["duckdb", "postgresql"])
def analytics_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path}/analytics.duckdb"
    return str(request.getfixturevalue("postgres_dsn"))


def test_sigkill_mid_stream_then_restart_stores_every_event_exactly_once(
        kafka_bootstrap: str, analytics_dsn: str, tmp_path: Path) -> None:
    total = 12_000
    settings = testing.settings_for(kafka_bootstrap, partitions=3, analytics_dsn=analytics_dsn)
    testing.produce(settings, [testing.event() for _ in range(total)])
    log = tmp_path / "consumer.log"

    with live_consumer(settings, log) as first:
        wait_for(lambda: first.metric("passpost_consumer_events_total") >= 1000, 60, message=log.read_text())
        first.process.kill()
        first.process.wait()
    rows, distinct, covered = store_state(analytics_dsn)
    assert 0 < rows < total, "the kill should land mid-stream"
    assert rows == distinct == covered  # rows and offsets moved together, even at a SIGKILL

    with live_consumer(settings, log) as second:
        wait_for(lambda: second.metric("passpost_consumer_events_total") >= total - rows, 60, message=log.read_text())
        time.sleep(0.5)  # room for a wrong extra batch to show up
        assert second.metric("passpost_consumer_events_total") == total - rows  # exactly the rest, no re-read
        assert second.terminate() == 0
    assert store_state(analytics_dsn) == (total, total, total)


def test_postgresql_down_for_a_while_loses_nothing(kafka_bootstrap: str, own_postgres: PostgresServer,
                                                   tmp_path: Path) -> None:
    dsn = own_postgres.create_database()
    settings = testing.settings_for(kafka_bootstrap, partitions=2, analytics_dsn=dsn)
    testing.produce(settings, [testing.event() for _ in range(2000)])
    log = tmp_path / "consumer.log"
    with live_consumer(settings, log) as consumer:
        wait_for(lambda: consumer.metric("passpost_consumer_events_total") >= 2000, 60, message=log.read_text())
        own_postgres.stop()
        testing.produce(settings, [testing.event() for _ in range(2000)])
        wait_for(lambda: consumer.metric("passpost_consumer_retries_total") >= 2, 60, message=log.read_text())
        own_postgres.start()
        wait_for(lambda: consumer.metric("passpost_consumer_events_total") >= 4000, 60, message=log.read_text())
        assert consumer.terminate() == 0
    assert store_state(dsn) == (4000, 4000, 4000)


def test_two_processes_rebalance_with_nothing_lost_or_doubled(kafka_bootstrap: str, postgres_dsn: str,
                                                              tmp_path: Path) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=4, analytics_dsn=postgres_dsn)
    chunks, size = 30, 400
    producing_done = threading.Event()

    def keep_producing() -> None:
        for _ in range(chunks):
            testing.produce(settings, [testing.event() for _ in range(size)])
            time.sleep(0.2)
        producing_done.set()

    producer = threading.Thread(target=keep_producing)
    producer.start()
    try:
        with live_consumer(settings, tmp_path / "a.log") as first:
            wait_for(lambda: first.metric("passpost_consumer_events_total") >= 1000, 60)
            with live_consumer(settings, tmp_path / "b.log") as second:
                # The second member got partitions and wrote some of them while the first still ran.
                wait_for(lambda: second.metric("passpost_consumer_events_total") >= 500, 60,
                         message=(tmp_path / "b.log").read_text())
                assert first.terminate() == 0  # leaves the group: its partitions move to the second
                producing_done.wait(60)
                wait_for(lambda: store_state(postgres_dsn)[2] >= chunks * size, 60,
                         message=(tmp_path / "b.log").read_text())
                assert second.terminate() == 0
    finally:
        producer.join()
    assert store_state(postgres_dsn) == (chunks * size, chunks * size, chunks * size)
