"""The analytics projection on DuckDB and on PostgreSQL: the same tests run against both stores."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from passpost import settings as settings_module
from passpost.consumers import testing
from passpost.consumers.analytics import AnalyticsConsumer
from passpost.consumers.analytics.columns import COLUMNS, TIMESTAMP_COLUMNS
from passpost.consumers.analytics.rebuild import rebuild
from passpost.consumers.analytics.report import print_report
from passpost.consumers.analytics.store import StoreLocked, open_store
from passpost.consumers.runtime import Item
from tests.live import free_port

pytestmark = pytest.mark.kafka


@pytest.fixture(params=["duckdb", "postgresql"])
def analytics_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path}/analytics.duckdb"
    return str(request.getfixturevalue("postgres_dsn"))


def query(dsn: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    store = open_store(dsn)
    try:
        return store._execute(sql)
    finally:
        store.close()


def test_every_event_once_with_its_offsets_and_redeliveries_not_counted_twice(
        kafka_bootstrap: str, analytics_dsn: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=3, analytics_dsn=analytics_dsn,
                                    consumer_batch_size=7)
    events = [testing.event(serial_number=f"S{n % 5}", extra={"PASSDATA/BARCODEVALUE": str(n)}) for n in range(40)]
    redelivered = events[3]  # the vendor posted it twice: same event_id, a later offset
    testing.produce(settings, [*events, b"\x00poison", redelivered])
    result = testing.consume(AnalyticsConsumer(settings), settings)

    assert [letter.headers_dict["error"] for letter in result.dead_letters] == ["undecodable"]
    assert query(analytics_dsn, "SELECT count(*), count(DISTINCT event_id) FROM pass_postbacks") == [(40, 40)]
    first_offset = query(analytics_dsn, f"SELECT kafka_offset FROM pass_postbacks WHERE event_id = "
                                        f"'{redelivered.event_id}'")[0][0]
    assert first_offset < max(row[0] for row in query(analytics_dsn, "SELECT kafka_offset FROM pass_postbacks"))
    # The stored offsets are the topic's end: every record, poison included, is behind them.
    stored = dict(query(analytics_dsn, "SELECT kafka_partition, next_offset FROM passpost_offsets"))
    ends = asyncio.run(_ends(settings))
    assert stored == {tp.partition: offset for tp, offset in ends.items() if offset}
    row = query(analytics_dsn, f"SELECT origin, status_code, outcome, serial_number, extra, kafka_topic "
                               f"FROM pass_postbacks WHERE event_id = '{events[7].event_id}'")[0]
    extra = row[4] if isinstance(row[4], dict) else json.loads(row[4])
    assert row[:4] + (extra, row[5]) == ("GENERATE_PASS", "N801", "SUCCESS", "S2", {"PASSDATA/BARCODEVALUE": "7"},
                                        settings.events_topic)

    # Another group (offsets in Kafka lost, say) still resumes from the store's offsets.
    again = testing.consume(AnalyticsConsumer(settings.replace(consumer_group="another")), settings)
    assert again.runner.metrics.registry.get_sample_value("passpost_consumer_events_total",
                                                          {"consumer": "analytics"}) in (None, 0.0)
    assert query(analytics_dsn, "SELECT count(*) FROM pass_postbacks") == [(40,)]


async def _ends(settings):  # type: ignore[no-untyped-def]
    from passpost.kafka import topic_bounds

    return (await topic_bounds(settings))[1]


@pytest.mark.parametrize("mode", ["hash", "keep", "drop"])
def test_reference_value_is_hashed_kept_or_dropped(kafka_bootstrap: str, tmp_path: Path, mode: str) -> None:
    dsn = f"duckdb:///{tmp_path}/analytics.duckdb"
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=dsn, analytics_reference_value=mode,
                                    analytics_hash_key="secret" if mode == "hash" else None)
    event = testing.event(reference_value="someone@example.com")
    testing.produce(settings, [event])
    testing.consume(AnalyticsConsumer(settings), settings)
    expected = {
        "hash": "hmac-sha256:" + hmac.new(b"secret", b"someone@example.com", hashlib.sha256).hexdigest(),
        "keep": "someone@example.com",
        "drop": None,
    }[mode]
    assert query(dsn, "SELECT reference_value FROM pass_postbacks") == [(expected,)]


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_the_hashed_reference_value_is_hmac_sha256_whatever_the_key_s_length(key_length: int) -> None:
    """The consumer's HMAC keeps its keyed states (a long key is hashed first, RFC 2104): the same as hmac.new."""
    from passpost.consumers.analytics import _hmac, hmac_pads

    key = bytes(range(256))[:key_length]
    inner, outer = hmac_pads(key)
    for value in ("", "someone@example.com", "+15551234567", "\u00e9\u4e2d" * 50):
        assert _hmac(inner, outer, value) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_a_batch_with_an_event_id_already_stored_keeps_the_first_and_stores_the_rest(analytics_dsn: str) -> None:
    """The stores write a batch without ON CONFLICT first where that is cheaper: a known event_id still
    leaves the first delivery in place, the batch's other rows and its offsets stored, in one transaction."""
    consumer = AnalyticsConsumer(settings_module.defaults().replace(analytics_dsn=analytics_dsn,
                                                                    analytics_reference_value="keep"))
    events = [testing.event(serial_number=f"S{n}") for n in range(6)]
    store = open_store(analytics_dsn)
    try:
        store.ensure_schema()
        store.write(consumer.columns([Item(event, "t", 0, n) for n, event in enumerate(events[:4])]), {("t", 0): 4})
        store.write(consumer.columns([Item(event, "t", 0, n + 10) for n, event in enumerate(events[2:])]),
                    {("t", 0): 14})
        assert store._execute("SELECT serial_number, kafka_offset FROM pass_postbacks ORDER BY 1") == [
            ("S0", 0), ("S1", 1), ("S2", 2), ("S3", 3), ("S4", 12), ("S5", 13)]
        assert store.load_offsets("t") == {0: 14}
    finally:
        store.close()


def test_duckdb_stores_the_same_rows_as_text_or_as_lists(tmp_path: Path) -> None:
    """DuckDB takes a batch as tab-separated text, or as parameter lists (values text cannot carry): the same
    rows and offsets either way."""
    consumer = AnalyticsConsumer(settings_module.defaults().replace(analytics_reference_value="keep"))
    events = [testing.event(serial_number=f"S{n}") for n in range(5)]
    events[1] = dataclasses.replace(events[1], generated_at=None, code=None, extra={'a"b': "\u00e9\\"})
    events[2] = dataclasses.replace(events[2], generated_at=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5))))
    events[3] = dataclasses.replace(events[3], code="", origin=' "quoted", \\N-ish \u4e2d', referenced_by="NULL")
    stored = []
    for path in ("text", "lists"):
        store = open_store(f"duckdb:///{tmp_path}/{path}.duckdb")
        if path == "lists":
            store._text = None  # type: ignore[attr-defined]
        try:
            store.ensure_schema()
            store.write(consumer.columns([Item(event, "t", 0, n) for n, event in enumerate(events[:3])]), {("t", 0): 3})
            store.write(consumer.columns([Item(event, "t", 0, n + 1) for n, event in enumerate(events[1:])]),
                        {("t", 0): 5})
            stored.append((store._execute("SELECT * FROM pass_postbacks ORDER BY serial_number"), store.load_offsets("t")))
        finally:
            store.close()
    assert stored[0] == stored[1]
    rows, offsets = stored[0]
    assert len(rows) == 5 and offsets == {0: 5}
    assert rows[2][10] == datetime(2026, 1, 1, 17)  # generated_at, naive UTC
    assert (rows[3][1], rows[3][4], rows[3][5]) == (' "quoted", \\N-ish \u4e2d', "", "NULL")
    assert rows[1][4] is None and json.loads(rows[1][13]) == {'a"b': "\u00e9\\"}


@pytest.mark.parametrize("value", ["tab\there", "line\nbreak", "carriage\rreturn", "\\N", "\ufeffbom", "nul\x00"])
def test_duckdb_stores_values_text_cannot_carry_through_the_lists(tmp_path: Path, value: str) -> None:
    consumer = AnalyticsConsumer(settings_module.defaults().replace(analytics_reference_value="keep"))
    store = open_store(f"duckdb:///{tmp_path}/analytics.duckdb")
    try:
        store.ensure_schema()
        event = testing.event(event_id=value, serial_number=value, extra={value: value})
        store.write(consumer.columns([Item(event, "t", 0, 0), Item(testing.event(), "t", 0, 1)]), {("t", 0): 2})
        [(serial, extra)] = store._execute("SELECT serial_number, extra FROM pass_postbacks WHERE kafka_offset = 0")
        assert serial == value and json.loads(extra) == {value: value}
    finally:
        store.close()


def test_without_a_key_the_store_generates_one_and_keeps_it(kafka_bootstrap: str, analytics_dsn: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=analytics_dsn)
    testing.produce(settings, [testing.event(reference_value="+15550100")])
    testing.consume(AnalyticsConsumer(settings), settings)
    testing.produce(settings, [testing.event(reference_value="+15550100")])
    testing.consume(AnalyticsConsumer(settings), settings)
    values = [row[0] for row in query(analytics_dsn, "SELECT reference_value FROM pass_postbacks")]
    assert len(values) == 2 and values[0] == values[1] and values[0].startswith("hmac-sha256:")
    assert "+15550100" not in values[0]


def test_hourly_view_report_and_rebuild(kafka_bootstrap: str, analytics_dsn: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=2, analytics_dsn=analytics_dsn)
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    events = [
        testing.event(status_code="N801", generated_at=now - timedelta(hours=2), received_at=now),
        testing.event(status_code="N802", generated_at=now - timedelta(hours=2), received_at=now),
        # No offset in TIMESTAMP: no generated_at, so the hour is that of received_at.
        testing.event(status_code="N802", generated_at=None, received_at=now, serial_number="FAILED-ONE"),
    ]
    testing.produce(settings, events)
    testing.consume(AnalyticsConsumer(settings), settings)
    hourly = query(analytics_dsn, "SELECT hour, status_code, outcome, postbacks FROM pass_postbacks_hourly "
                                  "ORDER BY hour, status_code")
    hour = now.replace(minute=0)
    as_utc = [(h.replace(tzinfo=UTC) if h.tzinfo is None else h.astimezone(UTC), s, o, n)
              for h, s, o, n in hourly]
    assert as_utc == [(hour - timedelta(hours=2), "N801", "SUCCESS", 1), (hour - timedelta(hours=2), "N802",
                      "FAILURE", 1), (hour, "N802", "FAILURE", 1)]

    output = io.StringIO()
    print_report(settings, Console(file=output, width=120), now=now)
    text = output.getvalue()
    assert "3 postbacks" in text and "FAILED-ONE" in text and "N802" in text

    assert asyncio.run(rebuild(settings, show_progress=False)) == 3
    assert query(analytics_dsn, "SELECT count(*) FROM pass_postbacks") == [(3,)]


@pytest.mark.parametrize("command", [("consume", "analytics"), ("rebuild", "analytics"), ("report",)])
def test_a_dsn_whose_folder_cannot_be_created_is_one_line(kafka_bootstrap: str, command: tuple[str, ...]) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "PASSPOST_EVENTS_TOPIC": settings.events_topic, "PASSPOST_CONSUMER_PORT": str(free_port()),
           "PASSPOST_ANALYTICS_DSN": "duckdb:////proc/x/a.duckdb"}
    result = subprocess.run([sys.executable, "-m", "passpost", *command], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ["passpost: error: PASSPOST_ANALYTICS_DSN: cannot create the folder /proc/x "
                                          "of DuckDB file /proc/x/a.duckdb: No such file or directory"]


def test_report_works_while_the_consumer_holds_the_duckdb_file_and_says_when_the_data_is_older(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """DuckDB lets no other process read a file one writes: the running consumer answers for it. The
    vendor's example is dated 2013: the report says why its last 24 hours are empty."""
    dsn = f"duckdb:///{tmp_path}/analytics.duckdb"
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=dsn)
    generated = datetime(2013, 11, 26, 11, 37, 11, tzinfo=UTC)
    testing.produce(settings, [testing.event(status_code="N811", generated_at=generated),
                               testing.event(status_code="N801", generated_at=generated)])
    port = free_port()
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_ANALYTICS_DSN": dsn,
           "PASSPOST_EVENTS_TOPIC": settings.events_topic, "PASSPOST_CONSUMER_GROUP": settings.consumer_group or "",
           "PASSPOST_CONSUMER_PORT": str(port)}
    log = tmp_path / "consume.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "consume", "analytics"], env=env,
                                   stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while 'passpost_consumer_events_total{consumer="analytics"} 2.0' not in _get(f"http://127.0.0.1:{port}/metrics"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with pytest.raises(StoreLocked):  # what `report` met before
            open_store(dsn, read_only=True)
        result = subprocess.run([sys.executable, "-m", "passpost", "report"], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "2 postbacks" in result.stdout and "N811" in result.stdout
        assert "the latest postback is from 2013-11-26 11:00 UTC" in " ".join(result.stdout.split())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    assert not (tmp_path / "analytics.duckdb.serving").exists()
    # Stopped, the file is read directly again, with the same answer.
    result = subprocess.run([sys.executable, "-m", "passpost", "report"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and "2 postbacks" in result.stdout, result.stderr


def test_a_locked_duckdb_file_with_no_consumer_to_ask_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    hold = f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('open', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        result = subprocess.run([sys.executable, "-m", "passpost", "report"],
                                env={**os.environ, "PASSPOST_ANALYTICS_DSN": f"duckdb:///{path}"},
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        holder.communicate(b"")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"passpost: error: cannot open DuckDB file {path}: ") and "Conflicting lock" in line
    assert line.endswith("(and no running analytics consumer says where to ask instead: stop the process that "
                         "holds it)")


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def test_on_postgresql_an_event_it_can_never_store_is_dead_lettered_and_the_rest_stored(
        kafka_bootstrap: str, postgres_dsn: str) -> None:
    """PostgreSQL's text cannot hold NUL: that row is poison (PoisonBatch), not a reason to retry forever."""
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=postgres_dsn)
    events = [testing.event(serial_number="S1"), testing.event(serial_number="S\x002"), testing.event(serial_number="S3")]
    testing.produce(settings, events)
    result = testing.consume(AnalyticsConsumer(settings), settings)

    assert [(letter.headers_dict["error"], letter.headers_dict["offset"]) for letter in result.dead_letters] == [
        ("poison", "1")]
    stored = query(postgres_dsn, "SELECT serial_number FROM pass_postbacks WHERE event_id IN "
                                 f"('{events[0].event_id}', '{events[2].event_id}') ORDER BY 1")
    assert stored == [("S1",), ("S3",)]
    assert dict(query(postgres_dsn, "SELECT kafka_topic, next_offset FROM passpost_offsets WHERE kafka_topic = "
                                    f"'{settings.events_topic}'")) == {settings.events_topic: 3}


def test_a_duckdb_dsn_s_query_holds_duckdb_settings_over_the_store_s_defaults(tmp_path: Path) -> None:
    """DuckDB caches every block it reads or writes up to its memory limit (80% of the machine's by default):
    the store sets 64MB and one thread unless the DSN says otherwise; any DuckDB setting may be given there."""
    from passpost.consumers.analytics import serving
    from passpost.consumers.analytics.store import StoreUnavailable

    def settings_of(dsn: str) -> tuple[str, str]:
        store = open_store(dsn)
        try:
            [(memory_limit, threads)] = store._execute("SELECT current_setting('memory_limit'), "
                                                       "current_setting('threads')::VARCHAR")
            return memory_limit, threads
        finally:
            store.close()

    assert settings_of(f"duckdb:///{tmp_path}/default.duckdb") == ("61.0 MiB", "1")  # 64MB, one thread
    dsn = f"duckdb:///{tmp_path}/tuned.duckdb?memory_limit=256MB&threads=2"
    assert settings_of(dsn) == ("244.1 MiB", "2")
    assert serving.duckdb_path(dsn) == tmp_path / "tuned.duckdb" and (tmp_path / "tuned.duckdb").exists()
    with pytest.raises(StoreUnavailable, match="^cannot open DuckDB file .*bad.duckdb with memory_limit=lots: ") as error:
        open_store(f"duckdb:///{tmp_path}/bad.duckdb?memory_limit=lots")
    assert "\n" not in str(error.value)


def test_duckdb_keeps_working_once_its_key_index_outgrows_the_memory_limit(tmp_path: Path) -> None:
    """Defect: the primary key's index counts against DuckDB's memory limit and cannot be evicted; with the
    limit fixed (64MB by default) a table of some 700,000 random event ids failed its checkpoint and DuckDB
    invalidated the database for good. Here the limit is 16MB and the index outgrows it at about 250,000."""
    dsn = f"duckdb:///{tmp_path}/analytics.duckdb?memory_limit=16MB"
    store = open_store(dsn)
    rows = 5000
    try:
        store.ensure_schema()
        for batch in range(60):
            first = batch * rows
            ids = [hashlib.sha256(str(first + n).encode()).hexdigest()[:32] for n in range(rows)]  # as the ingress's
            columns: dict[str, list[object]] = {name: [f"{name}-{n % 977}" for n in range(rows)] for name in COLUMNS}
            columns.update({"event_id": ids, "outcome": ["SUCCESS"] * rows, "extra": ["{}"] * rows,
                            "kafka_partition": [0] * rows, "kafka_offset": list(range(first, first + rows))})
            for name in TIMESTAMP_COLUMNS:
                columns[name] = [1_764_000_000_000_000 + first + n for n in range(rows)]
            store.write(columns, {("t", 0): first + rows})
        store._execute("CHECKPOINT")
    finally:
        store.close()
    store = open_store(dsn)
    try:
        assert store.count() == 60 * rows and store.load_offsets("t") == {0: 60 * rows}
    finally:
        store.close()
