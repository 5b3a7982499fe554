"""The lakehouse consumer on real parts: a SQL catalog on the PostgreSQL the tests start, a file warehouse in
tmp, the Kafka broker fixture. Exactly once is checked by counts that must match to the event: the table's
rows equal the distinct event ids and the records its snapshots' offsets cover."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if not os.environ.get("CI"):  # CI installs the extra (make test): there a skip would hide a broken install
    pytest.importorskip("pyiceberg")

from passpost import settings as settings_module  # noqa: E402
from passpost.consumers import testing  # noqa: E402
from passpost.consumers.lakehouse import LakehouseConsumer  # noqa: E402
from passpost.consumers.lakehouse import table as iceberg  # noqa: E402
from passpost.settings import Settings  # noqa: E402

HASH_KEY = "test-hash-key"


def lakehouse_settings(postgres_dsn: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"iceberg_catalog_uri": postgres_dsn, "iceberg_warehouse": f"file://{tmp_path}/warehouse",
            "analytics_hash_key": HASH_KEY, "iceberg_commit_seconds": 0.5, **overrides}


def table_state(settings: Settings) -> tuple[int, int, int]:
    """(rows, distinct event ids, records covered by the offsets in the snapshots)."""
    table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
    data = table.scan(selected_fields=("event_id",)).to_arrow()
    offsets, _ = iceberg.all_offsets(table)
    return data.num_rows, len(set(data.column("event_id").to_pylist())), sum(offsets.values())


def test_events_land_once_with_the_reference_hashed_and_extra_as_a_map(
        kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    settings = testing.settings_for(kafka_bootstrap, partitions=3, **lakehouse_settings(postgres_dsn, tmp_path))
    events = [testing.event(reference_value=f"person{n}@example.com", extra={"PASSDATA": f"<x>{n}</x>"})
              for n in range(300)]
    testing.produce(settings, [*events, b"not avro"])
    testing.consume(LakehouseConsumer(settings), settings)
    assert table_state(settings) == (300, 300, 301)  # the dead letter's offset is covered too

    table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
    rows = {row["event_id"]: row for row in table.scan().to_arrow().to_pylist()}
    for event in events:
        row = rows[event.event_id]
        expected = hmac.new(HASH_KEY.encode(), str(event.reference_value).encode(), hashlib.sha256).hexdigest()
        assert row["reference_value"] == f"hmac-sha256:{expected}"
        assert dict(row["extra"]) == event.extra
        assert row["received_at"] == event.received_at
    assert [field.name for field in table.spec().fields] == ["received_at_day"]
    _, identities = iceberg.all_offsets(table)
    assert list(identities) == [settings.events_topic]  # kept with the offsets (cluster id/topic id)
    # What is in clear nowhere: not in a data file, not in the metadata.
    files = b"".join(path.read_bytes() for path in (tmp_path / "warehouse").rglob("*") if path.is_file())
    assert b"person1@example.com" not in files

    # A second life of the consumer (same group, new process state) finds its offsets in the table: nothing is
    # read twice, and the next events land once.
    more = [testing.event() for _ in range(50)]
    testing.produce(settings, more)
    testing.consume(LakehouseConsumer(settings.replace(consumer_group=f"{settings.consumer_group}-other")), settings)
    assert table_state(settings) == (350, 350, 351)


def test_a_commit_conflict_is_retried_on_the_refreshed_table_without_losing_or_doubling(
        postgres_dsn: str, tmp_path: Path) -> None:
    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    catalog = iceberg.load_catalog(settings)
    first = iceberg.ensure_table(catalog, settings.iceberg_table)
    second = catalog.load_table(settings.iceberg_table)  # the same snapshot, as another replica sees it
    first_log, second_log = iceberg.OffsetLog(), iceberg.OffsetLog()
    first_log.find(first, [("t", 0), ("t", 1)])
    second_log.find(second, [("t", 0), ("t", 1)])

    # Replica one commits partition 0's offsets 0-99; replica two, holding stale metadata, commits partition 1
    # (a conflict PyIceberg's catalog refuses) and, from an earlier assignment, offsets 50-149 of partition 0.
    one = iceberg.commit(first, first_log, rows("t", 0, range(0, 100)), {("t", 0): 100}, {})
    assert (one.rows, one.attempts) == (100, 1)
    two = iceberg.commit(second, second_log, {key: a + b for (key, a), b in zip(
        rows("t", 1, range(0, 40)).items(), rows("t", 0, range(50, 150)).values(), strict=True)},
        {("t", 1): 40, ("t", 0): 150}, {})
    assert two.attempts == 2  # the conflict happened, and the retry read the other replica's commit
    assert (two.rows, two.skipped) == (90, 50)  # offsets 50-99 of partition 0 were already in
    assert table_state(settings) == (190, 190, 190)
    offsets, _ = iceberg.all_offsets(catalog.load_table(settings.iceberg_table))
    assert offsets == {("t", 0): 150, ("t", 1): 40}


def rows(topic: str, partition: int, offsets: range) -> dict[str, list[Any]]:
    from passpost.consumers.analytics.columns import COLUMNS, columns_of

    events = [testing.event(extra={"n": str(offset)}) for offset in offsets]
    records = [event.to_record() for event in events]
    fields = {name: [record[name] for record in records] for name in records[0]}
    columns = columns_of(fields, {}, [topic] * len(events), [partition] * len(events), list(offsets))
    assert list(columns) == list(COLUMNS)
    return columns


def test_a_field_added_to_the_event_schema_becomes_an_optional_column(postgres_dsn: str, tmp_path: Path) -> None:
    from pyiceberg.schema import Schema

    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    catalog = iceberg.load_catalog(settings)
    catalog.create_namespace("passpost")
    full = iceberg.iceberg_schema()
    # The table as an earlier version of the schema made it: without the last optional event field.
    dropped = "serial_number"
    older = Schema(*(field for field in full.fields if field.name != dropped))
    catalog.create_table(settings.iceberg_table, schema=older)
    old_rows = rows("t", 0, range(5))
    iceberg.commit(catalog.load_table(settings.iceberg_table), iceberg.OffsetLog(),
                   {name: values for name, values in old_rows.items() if name != dropped}, {("t", 0): 5}, {})

    table = iceberg.ensure_table(catalog, settings.iceberg_table)
    column = table.schema().find_field(dropped)
    assert not column.required
    iceberg.commit(table, iceberg.OffsetLog(), rows("t", 0, range(5, 8)), {("t", 0): 8}, {})
    values = table.scan(selected_fields=(dropped, "kafka_offset")).to_arrow().to_pylist()
    assert sorted((row["kafka_offset"], row[dropped] is None) for row in values) == [
        (offset, offset < 5) for offset in range(8)]


@pytest.mark.parametrize(("variable", "value", "names"), [
    ("PASSPOST_ICEBERG_CATALOG_URI", "mysql://db/catalog", "PASSPOST_ICEBERG_CATALOG_URI"),
    ("PASSPOST_ICEBERG_WAREHOUSE", "relative/path", "PASSPOST_ICEBERG_WAREHOUSE"),
    ("PASSPOST_ICEBERG_TABLE", "no_namespace", "PASSPOST_ICEBERG_TABLE"),
    ("PASSPOST_ICEBERG_COMMIT_SECONDS", "-1", "PASSPOST_ICEBERG_COMMIT_SECONDS"),
    ("PASSPOST_ICEBERG_COMMIT_ROWS", "0", "PASSPOST_ICEBERG_COMMIT_ROWS"),
])
def test_a_bad_setting_is_one_line_naming_it_and_status_2(variable: str, value: str, names: str) -> None:
    result = subprocess.run([sys.executable, "-m", "passpost", "consume", "lakehouse"], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", variable: value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"passpost: error: {names}:"), result.stderr


@pytest.mark.parametrize(("env", "names"), [
    ({}, "PASSPOST_ANALYTICS_HASH_KEY"),
    ({"PASSPOST_ANALYTICS_HASH_KEY": "k"}, "PASSPOST_ICEBERG_CATALOG_URI"),
    ({"PASSPOST_ANALYTICS_HASH_KEY": "k", "PASSPOST_ICEBERG_CATALOG_URI": "sqlite:////tmp/c.db"},
     "PASSPOST_ICEBERG_WAREHOUSE"),
])
def test_a_missing_setting_is_one_line_naming_it_and_status_2(env: dict[str, str], names: str) -> None:
    result = subprocess.run([sys.executable, "-m", "passpost", "consume", "lakehouse"], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"passpost: error: {names}:"), result.stderr


def test_the_catalog_uri_with_a_password_never_shows_in_a_repr() -> None:
    settings = settings_module.defaults().replace(iceberg_catalog_uri="postgresql://u:secret@db/c")
    assert "secret" not in repr(settings)
    assert json.dumps(iceberg.catalog_properties(settings.replace(iceberg_warehouse="s3://bucket/w"), {
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"})) == json.dumps({
            "type": "sql", "uri": "postgresql+psycopg://u:secret@db/c", "warehouse": "s3://bucket/w",
            "s3.endpoint": "http://127.0.0.1:9000", "s3.force-virtual-addressing": "false",
            "s3.region": "eu-west-1"})


def test_maintain_compacts_small_files_and_expires_snapshots_keeping_every_needed_offset(
        postgres_dsn: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from passpost.consumers.lakehouse.maintain import data_files, expire, maintain

    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    catalog = iceberg.load_catalog(settings)
    table = iceberg.ensure_table(catalog, settings.iceberg_table)
    offsets = iceberg.OffsetLog()
    iceberg.commit(table, offsets, rows("t", 1, range(0, 10)), {("t", 1): 10}, {"t": "cluster/topic"})
    for start in range(0, 50, 10):  # small commits: one file each
        iceberg.commit(table, offsets, rows("t", 0, range(start, start + 10)), {("t", 0): start + 10}, {})
    # Expiry alone (nothing compacted yet) keeps the snapshot that alone names partition 1 and the identity.
    expired, kept = expire(table, datetime.now(UTC) + timedelta(minutes=1))
    assert (expired, kept) == (4, 2)
    assert iceberg.all_offsets(table) == ({("t", 0): 50, ("t", 1): 10}, {"t": "cluster/topic"})

    assert len(data_files(table)) == 6
    done = maintain(settings, expire_older_than=timedelta(0), now=datetime.now(UTC) + timedelta(minutes=1))
    assert (done.partitions_compacted, done.files_before, done.files_after) == (1, 6, 1)
    table = catalog.load_table(settings.iceberg_table)
    assert len(table.metadata.snapshots) == 1  # the compaction's carries every offset forward
    assert iceberg.all_offsets(table) == ({("t", 0): 50, ("t", 1): 10}, {"t": "cluster/topic"})
    assert iceberg.OffsetLog().find(table, [("t", 0), ("t", 1), ("t", 2)]) == {("t", 0): 50, ("t", 1): 10}
    assert table_state(settings) == (60, 60, 60)

    # A consumer goes on after maintenance: its offsets come from the compaction's snapshot.
    result = iceberg.commit(table, iceberg.OffsetLog(), rows("t", 0, range(45, 55)), {("t", 0): 55}, {})
    assert (result.rows, result.skipped) == (5, 5)
    assert table_state(settings) == (65, 65, 65)


def test_report_reads_the_iceberg_table_through_the_catalog_settings(postgres_dsn: str, tmp_path: Path) -> None:
    import os

    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    table = iceberg.ensure_table(iceberg.load_catalog(settings), settings.iceberg_table)
    failures = rows("t", 0, range(7))
    failures["outcome"] = ["FAILURE"] * 7
    iceberg.commit(table, iceberg.OffsetLog(), failures, {("t", 0): 7}, {})
    env = {**os.environ, "PASSPOST_ICEBERG_CATALOG_URI": postgres_dsn,
           "PASSPOST_ICEBERG_WAREHOUSE": str(settings.iceberg_warehouse)}
    result = subprocess.run([sys.executable, "-m", "passpost", "report", "--store", "lakehouse"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "7 postbacks in Iceberg table passpost.pass_postbacks" in result.stdout
    assert "FAILURE" in result.stdout and "Latest failures" in result.stdout


def test_offsets_of_a_re_created_topic_are_refused_like_the_other_stores_refuse_them(
        postgres_dsn: str, tmp_path: Path) -> None:
    import asyncio

    from passpost.consumers.runtime.identity import ForeignOffsets
    from passpost.topic_metadata import TopicIdentity

    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    table = iceberg.ensure_table(iceberg.load_catalog(settings), settings.iceberg_table)
    iceberg.commit(table, iceberg.OffsetLog(), rows("events", 0, range(3)), {("events", 0): 3},
                   {"events": "cluster-1/topic-old"})

    async def check(identity: TopicIdentity) -> None:
        consumer = LakehouseConsumer(settings)
        await consumer.start()
        try:
            await consumer.check_topic("events", identity)
        finally:
            consumer.stopping.set()
            await consumer.close()

    asyncio.run(check(TopicIdentity("cluster-1", "topic-old")))  # the same topic: its offsets hold
    with pytest.raises(ForeignOffsets, match="deleted and re-created"):
        asyncio.run(check(TopicIdentity("cluster-1", "topic-new")))
    with pytest.raises(ForeignOffsets, match="another Kafka cluster"):
        asyncio.run(check(TopicIdentity("cluster-2", "topic-old")))


def test_passpost_lakehouse_maintain_from_the_command_line(postgres_dsn: str, tmp_path: Path) -> None:
    import os

    settings = settings_module.defaults().replace(**lakehouse_settings(postgres_dsn, tmp_path))
    table = iceberg.ensure_table(iceberg.load_catalog(settings), settings.iceberg_table)
    offsets = iceberg.OffsetLog()
    for start in range(0, 30, 10):
        iceberg.commit(table, offsets, rows("t", 0, range(start, start + 10)), {("t", 0): start + 10}, {})
    env = {**os.environ, "PASSPOST_ICEBERG_CATALOG_URI": postgres_dsn,
           "PASSPOST_ICEBERG_WAREHOUSE": str(settings.iceberg_warehouse)}
    result = subprocess.run([sys.executable, "-m", "passpost", "lakehouse", "maintain", "--expire-older-than-hours",
                             "0"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("compacted 1 day partition(s): 3 data files -> 1; expired "), result.stdout
    assert table_state(settings) == (30, 30, 30)
