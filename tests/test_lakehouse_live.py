"""`passpost consume lakehouse` as a real process: postbacks through the ingress, SIGKILL, two replicas.

A SQL catalog on the PostgreSQL the tests start and a file warehouse in tmp. Exactly once is checked by
counts that must match to the event: the table's rows equal its distinct event ids and the records its
snapshots' offsets cover."""

from __future__ import annotations

import hashlib
import hmac
import os
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

if not os.environ.get("CI"):  # CI installs the extra (make test): there a skip would hide a broken install
    pytest.importorskip("pyiceberg")

from passpost.consumers import testing  # noqa: E402
from passpost.settings import Settings  # noqa: E402
from tests.live import free_port, live_ingress  # noqa: E402
from tests.postgres_fixtures import wait_for  # noqa: E402
from tests.test_lakehouse import HASH_KEY, lakehouse_settings, table_state  # noqa: E402

pytestmark = pytest.mark.kafka


@dataclass
class LiveLakehouse:
    process: subprocess.Popen[bytes]
    log: Path

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def environment(settings: Settings, **env: str) -> dict[str, str]:
    return {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "PASSPOST_EVENTS_TOPIC": settings.events_topic, "PASSPOST_CONSUMER_GROUP": str(settings.consumer_group),
            "PASSPOST_ICEBERG_CATALOG_URI": str(settings.iceberg_catalog_uri),
            "PASSPOST_ICEBERG_WAREHOUSE": str(settings.iceberg_warehouse), "PASSPOST_ANALYTICS_HASH_KEY": HASH_KEY,
            "PASSPOST_ICEBERG_COMMIT_SECONDS": "0.5", "PASSPOST_ICEBERG_COMMIT_ROWS": "500",
            "PASSPOST_CONSUMER_BATCH_SIZE": "100", "PASSPOST_CONSUMER_RETRY_MAX_SECONDS": "0.5", **env}


@contextmanager
def live_lakehouse(settings: Settings, log: Path, **env: str) -> Iterator[LiveLakehouse]:
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "consume", "lakehouse"],
                                   env=environment(settings, PASSPOST_CONSUMER_PORT=str(free_port()), **env),
                                   stdout=sink, stderr=sink)
    try:
        yield LiveLakehouse(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def rows_now(settings: Settings) -> int:
    try:
        return table_state(settings)[0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_postbacks_posted_to_the_ingress_land_once(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=2, **lakehouse_settings(postgres_dsn, tmp_path))
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": settings.events_topic,
           "PASSPOST_INGEST_OPEN": "true", "PASSPOST_LOG_LEVEL": "warning"}
    total = 200
    with live_ingress(env, tmp_path / "ingress.log") as ingress, httpx.Client(base_url=ingress.url) as client:
        for n in range(total):
            body = (f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE>"
                    f"<REFERENCEVALUE>+4479{n:08d}</REFERENCEVALUE><SERIALNUMBER>S{n}</SERIALNUMBER>"
                    f"<TIMESTAMP>2026-11-26T11:37:11-05:00</TIMESTAMP><PASSDATA>d{n}</PASSDATA></POSTBACK>")
            assert client.post("/postbacks/passes", content=body).status_code == 200
    log = tmp_path / "consumer.log"
    with live_lakehouse(settings, log) as consumer:
        wait_for(lambda: rows_now(settings) >= total or consumer.process.poll() is not None, 60,
                 message=log.read_text())
        time.sleep(1.5)  # room for a wrong extra commit to show up
        assert consumer.terminate() == 0, log.read_text()
    assert table_state(settings) == (total, total, total)

    from passpost.consumers.lakehouse import table as iceberg

    table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
    by_serial = {row["serial_number"]: row for row in table.scan().to_arrow().to_pylist()}
    expected = hmac.new(HASH_KEY.encode(), b"+447900000007", hashlib.sha256).hexdigest()
    assert by_serial["S7"]["reference_value"] == f"hmac-sha256:{expected}"
    assert dict(by_serial["S7"]["extra"]) == {"PASSDATA": "d7"}
    assert "+4479" not in log.read_text()  # no personal data in the consumer's log either


def test_sigkill_mid_stream_then_restart_stores_every_event_exactly_once(
        kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    total = 12_000
    settings = testing.settings_for(kafka_bootstrap, partitions=3, **lakehouse_settings(postgres_dsn, tmp_path))
    testing.produce(settings, [testing.event() for _ in range(total)])
    log = tmp_path / "consumer.log"

    with live_lakehouse(settings, log) as first:
        wait_for(lambda: rows_now(settings) >= 2000 or first.process.poll() is not None, 90, message=log.read_text())
        first.process.kill()
        first.process.wait()
    rows, distinct, covered = table_state(settings)
    assert 0 < rows < total, "the kill should land mid-stream"
    assert rows == distinct == covered  # rows and offsets moved together, even at a SIGKILL

    with live_lakehouse(settings, log) as second:
        wait_for(lambda: table_state(settings)[2] >= total or second.process.poll() is not None, 90,
                 message=log.read_text())
        assert second.terminate() == 0
    assert table_state(settings) == (total, total, total)


def test_two_replicas_and_a_rebalance_with_nothing_lost_or_doubled(
        kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=4, **lakehouse_settings(postgres_dsn, tmp_path))
    chunks, size = 40, 100  # ~0.3 s apart: still coming while the second replica joins and the first leaves
    producing_done = threading.Event()

    def keep_producing() -> None:
        for _ in range(chunks):
            testing.produce(settings, [testing.event() for _ in range(size)])
            time.sleep(0.3)
        producing_done.set()

    producer = threading.Thread(target=keep_producing)
    producer.start()
    try:
        with live_lakehouse(settings, tmp_path / "a.log") as first:
            wait_for(lambda: rows_now(settings) >= 300, 90, message="the first replica committed nothing")
            with live_lakehouse(settings, tmp_path / "b.log") as second:
                # Both replicas commit to the one table until the first leaves; its partitions move over.
                wait_for(lambda: "committed" in (tmp_path / "b.log").read_text(), 90,
                         message="the second replica committed nothing")
                assert first.terminate() == 0
                producing_done.wait(90)
                wait_for(lambda: table_state(settings)[2] >= chunks * size, 90,
                         message=(tmp_path / "b.log").read_text())
                assert second.terminate() == 0
    finally:
        producer.join()
    assert table_state(settings) == (chunks * size, chunks * size, chunks * size)
