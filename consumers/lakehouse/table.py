"""The lakehouse table: an Apache Iceberg table behind a catalog, with the Kafka offsets in its snapshots.

Columns are the analytics table's (``analytics/columns.py``, derived from the event schema): strings
and enum symbols ``string``, timestamps ``timestamptz`` (microseconds, UTC), ``extra`` a
``map<string, string>``, then ``kafka_topic``, ``kafka_partition``, ``kafka_offset``. Partitioned by
``day(received_at)``. A field added to the Avro schema (optional, as compatibility requires) becomes an
optional column at the next start (``ensure_table``).

Exactly once rests on the snapshot summaries. Each commit of the consumer is one append snapshot whose
summary holds, under ``passpost.offsets``, the next offset of every partition whose records it covers
(``{"topic": {"partition": next_offset}}``) and, under ``passpost.topic-identities``, the identity of the
topics they were read from. The offsets of a partition are those of the newest snapshot naming it, so
readers walk the snapshots newest first until every partition they want is found (``OffsetLog``). A commit
is made on the table as it is at that moment: rows below the offsets the table already holds are dropped
(another member, or an earlier life of this one, wrote them), so a conflict retried on the refreshed table,
a rebalance or a restart can neither lose nor double a row.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from passpost.consumers.analytics.columns import COLUMNS, NULLABLE, SQL_TYPES
from passpost.errors import ConfigurationError
from passpost.settings import Settings

if TYPE_CHECKING:  # pyiceberg and pyarrow come with the extra passpost[lakehouse]
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

log = logging.getLogger("passpost.lakehouse")

OFFSETS = "passpost.offsets"
IDENTITIES = "passpost.topic-identities"
PARTITION_COLUMN = "received_at"
#: Attempts of one commit against other writers' commits (each on the refreshed table) before the batch is
#: handed back to the runtime, which retries it with backoff.
COMMIT_ATTEMPTS = 20

TopicPartitionKey = tuple[str, int]


def require_extra() -> None:
    """One line saying how to install the extra when PyIceberg is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyiceberg  # noqa: F401
    except ModuleNotFoundError as missing:
        raise ConfigurationError(f"the lakehouse needs the extra passpost[lakehouse] ({missing.name} is not "
                                 "installed): pip install 'passpost[lakehouse]'") from None


def catalog_properties(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """PyIceberg catalog properties from the settings. PyIceberg adds its own ``PYICEBERG_CATALOG__<NAME>__*``
    variables and ``.pyiceberg.yaml`` to these (a REST catalog's token or credential), and PyArrow's S3 file
    system reads the ``AWS_*`` credentials; the endpoint and region are passed on because PyIceberg does not
    read them from there."""
    environ = os.environ if environ is None else environ
    uri = settings.iceberg_catalog_uri
    if uri is None:
        raise ConfigurationError("PASSPOST_ICEBERG_CATALOG_URI: not set; the lakehouse needs a catalog "
                                 "(sqlite:///path, postgresql://... or https://...)")
    properties: dict[str, str]
    if uri.startswith(("http://", "https://")):
        properties = {"type": "rest", "uri": uri}
    else:
        if settings.iceberg_warehouse is None:
            raise ConfigurationError("PASSPOST_ICEBERG_WAREHOUSE: not set; a SQL catalog needs a warehouse "
                                     "(file:///path or s3://bucket/prefix)")
        # SQLAlchemy drives the SQL catalog; on PostgreSQL through psycopg 3, which passpost already uses.
        scheme, _, rest = uri.partition("://")
        if scheme in {"postgresql", "postgres"}:
            uri = f"postgresql+psycopg://{rest}"
        properties = {"type": "sql", "uri": uri}
    if settings.iceberg_warehouse is not None:
        properties["warehouse"] = settings.iceberg_warehouse
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        properties["s3.endpoint"] = endpoint
        # An S3-compatible store at an endpoint of its own takes the bucket in the path (MinIO, Ceph, moto):
        # PyArrow's default, the bucket in the host name, is AWS's. PYICEBERG_CATALOG__<NAME>__S3__FORCE-VIRTUAL-
        # ADDRESSING=true restores it.
        properties["s3.force-virtual-addressing"] = "false"
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        properties["s3.region"] = region
    return properties


def load_catalog(settings: Settings) -> Catalog:
    require_extra()
    from pyiceberg.catalog import load_catalog as load

    return load(settings.iceberg_catalog_name, **catalog_properties(settings))


def iceberg_schema() -> Schema:
    """The table's schema from the event schema: one column per analytics column, nullable as there."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import (
        IcebergType,
        IntegerType,
        LongType,
        MapType,
        NestedField,
        StringType,
        TimestamptzType,
    )

    fields = []
    next_id = len(COLUMNS) + 1  # the map's key and value need ids of their own
    for field_id, name in enumerate(COLUMNS, start=1):
        sql = SQL_TYPES[name]
        kind: IcebergType
        if sql == "{json}":
            kind = MapType(key_id=next_id, key_type=StringType(), value_id=next_id + 1, value_type=StringType(),
                           value_required=True)
            next_id += 2
        else:
            kind = {"TEXT": StringType(), "{ts}": TimestamptzType(), "INTEGER": IntegerType(),
                    "BIGINT": LongType()}[sql]
        fields.append(NestedField(field_id=field_id, name=name, field_type=kind, required=name not in NULLABLE))
    return Schema(*fields)


def ensure_table(catalog: Catalog, identifier: str) -> Table:
    """The table, created (with its namespace) when missing, and with a column for every event field: a field
    the schema gained since becomes an optional column (PyIceberg's union by name adds, never drops)."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    namespace = identifier.rpartition(".")[0]
    try:
        return _evolve(catalog.load_table(identifier))
    except NoSuchTableError:
        pass
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    schema = iceberg_schema()
    source = schema.find_field(PARTITION_COLUMN).field_id
    spec = PartitionSpec(PartitionField(source_id=source, field_id=1000, transform=DayTransform(),
                                        name=f"{PARTITION_COLUMN}_day"))
    try:
        table = catalog.create_table(identifier, schema=schema, partition_spec=spec)
        log.info("created the Iceberg table %s", identifier)
        return table
    except TableAlreadyExistsError:  # another replica made it first
        return _evolve(catalog.load_table(identifier))


def _evolve(table: Table) -> Table:
    have = {column.name for column in table.schema().columns}
    missing = [name for name in COLUMNS if name not in have]
    if missing:
        with table.update_schema() as update:
            update.union_by_name(iceberg_schema())
        log.info("added the columns %s to the Iceberg table %s", ", ".join(missing), ".".join(table.name()))
    return table


def snapshots_newest_first(table: Table) -> Iterator[Snapshot]:
    """Every snapshot the table's metadata keeps, newest first. Not by parent links: expiry may have removed a
    snapshot between two that are kept (``passpost lakehouse maintain`` keeps those holding needed offsets)."""
    yield from sorted(table.metadata.snapshots, key=lambda snapshot: (snapshot.sequence_number or 0,
                                                                       snapshot.timestamp_ms), reverse=True)


def snapshot_offsets(snapshot: Snapshot) -> dict[TopicPartitionKey, int]:
    raw = snapshot.summary.get(OFFSETS) if snapshot.summary is not None else None
    if not raw:
        return {}
    return {(topic, int(partition)): int(offset) for topic, partitions in json.loads(raw).items()
            for partition, offset in partitions.items()}


def snapshot_identities(snapshot: Snapshot) -> dict[str, str]:
    raw = snapshot.summary.get(IDENTITIES) if snapshot.summary is not None else None
    return dict(json.loads(raw)) if raw else {}


def all_offsets(table: Table) -> tuple[dict[TopicPartitionKey, int], dict[str, str]]:
    """The offsets of every partition and the identity of every topic the table holds (the newest of each)."""
    offsets: dict[TopicPartitionKey, int] = {}
    identities: dict[str, str] = {}
    for snapshot in snapshots_newest_first(table):
        for key, offset in snapshot_offsets(snapshot).items():
            offsets.setdefault(key, offset)
        for topic, identity in snapshot_identities(snapshot).items():
            identities.setdefault(topic, identity)
    return offsets, identities


def summary_properties(offsets: Mapping[TopicPartitionKey, int], identities: Mapping[str, str]) -> dict[str, str]:
    by_topic: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        by_topic.setdefault(topic, {})[str(partition)] = offset
    properties = {OFFSETS: json.dumps(by_topic, separators=(",", ":"))}
    if identities:
        properties[IDENTITIES] = json.dumps(dict(identities), separators=(",", ":"))
    return properties


@dataclass
class OffsetLog:
    """What this process knows of the table's offsets, kept up to date from the snapshots made since: a commit
    reads only the snapshots newer than the last it saw, however many the other replicas made."""

    known: dict[TopicPartitionKey, int] = field(default_factory=dict)
    #: Partitions whose offsets were looked for in the whole history (absent from ``known``: none stored).
    walked: set[TopicPartitionKey] = field(default_factory=set)
    seen_snapshot: int | None = None

    def find(self, table: Table, partitions: Sequence[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The stored next offset of each of ``partitions`` that the table holds, as of ``table``'s metadata."""
        missing = {key for key in partitions if key not in self.walked}
        newer: dict[TopicPartitionKey, int] = {}
        # Snapshots up to the last one seen are already in ``known`` for the partitions walked before; those
        # after it are read whole. With none seen (an empty table then), or the one seen expired since, every
        # snapshot is.
        past_seen = False
        for snapshot in snapshots_newest_first(table):
            if snapshot.snapshot_id == self.seen_snapshot:
                past_seen = True
            if past_seen and not missing:
                break
            for key, offset in snapshot_offsets(snapshot).items():
                if not past_seen or key in missing:
                    newer.setdefault(key, offset)  # the newest snapshot naming a partition holds its offset
                    missing.discard(key)
        for key, offset in newer.items():
            self.known[key] = offset
        self.walked.update(partitions)
        current = table.current_snapshot()
        self.seen_snapshot = current.snapshot_id if current is not None else self.seen_snapshot
        return {key: self.known[key] for key in partitions if key in self.known}


def arrow_table(table_schema: Schema, columns: Mapping[str, Sequence[Any]], rows: int) -> pa.Table:
    """``columns`` (by name; timestamps as integer microseconds since the epoch, UTC; ``extra`` as dicts) as an
    Arrow table of the Iceberg table's schema. A column the table has and the batch lacks (one another writer
    added) is null."""
    import pyarrow as pa

    schema = table_schema.as_arrow()
    arrays = []
    for arrow_field in schema:
        values = columns.get(arrow_field.name)
        if values is None:
            arrays.append(pa.nulls(rows, type=arrow_field.type))
        elif pa.types.is_map(arrow_field.type):
            arrays.append(pa.array([None if value is None else list(value.items()) for value in values],
                                   type=arrow_field.type))
        else:
            arrays.append(pa.array(values, type=arrow_field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def select_rows(columns: Mapping[str, Sequence[Any]], rows: Sequence[int]) -> dict[str, list[Any]]:
    return {name: [values[row] for row in rows] for name, values in columns.items()}


@dataclass
class CommitResult:
    rows: int
    skipped: int  # rows the table already held (below its offsets)
    attempts: int


def commit(table: Table, log_: OffsetLog, columns: Mapping[str, Sequence[Any]],
           next_offsets: Mapping[TopicPartitionKey, int], identities: Mapping[str, str]) -> CommitResult:
    """Append ``columns`` with ``next_offsets`` in the snapshot's summary, as one snapshot, on the table as it is
    now: retried on the refreshed table when another writer committed first, dropping each time the rows whose
    offsets the table already covers."""
    from pyiceberg.exceptions import CommitFailedException

    partitions = sorted({*next_offsets, *zip(columns["kafka_topic"], columns["kafka_partition"], strict=True)})
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        stored = log_.find(table, partitions)
        keep = [row for row, (topic, partition, offset) in enumerate(zip(
            columns["kafka_topic"], columns["kafka_partition"], columns["kafka_offset"], strict=True))
            if offset >= stored.get((topic, partition), 0)]
        advanced = {key: offset for key, offset in next_offsets.items() if offset > stored.get(key, 0)}
        total = len(columns["kafka_offset"])
        if not keep and not advanced:
            return CommitResult(0, total, attempt)
        kept = columns if len(keep) == total else select_rows(columns, keep)
        data = arrow_table(table.schema(), kept, len(keep))
        try:
            append_once(table, data, summary_properties(advanced, identities))
        except CommitFailedException as conflict:
            # Another replica (or `passpost lakehouse maintain`) committed since this table was read.
            log.info("Iceberg commit conflict (%s); retrying on the refreshed table (attempt %d)",
                     str(conflict).splitlines()[0][:200], attempt)
            table.refresh()
            continue
        log_.known.update(advanced)
        current = table.current_snapshot()
        if current is not None and current.parent_snapshot_id == log_.seen_snapshot:
            log_.seen_snapshot = current.snapshot_id  # nobody else committed in between: nothing new to read
        return CommitResult(len(keep), total - len(keep), attempt)
    raise CommitConflicts(f"the Iceberg table kept changing under {COMMIT_ATTEMPTS} commit attempts")


def append_once(table: Table, data: pa.Table, properties: dict[str, str]) -> None:
    """``table.append`` without PyIceberg's own retries (see ``without_retries``)."""
    once = without_retries(table)
    once.append(data, snapshot_properties=properties)
    table.metadata, table.metadata_location = once.metadata, once.metadata_location


def without_retries(table: Table) -> Table:
    """``table`` for one commit that PyIceberg does not retry. On a conflict PyIceberg refreshes the table and
    applies the same change again (``commit.retry.num-retries``, 4 by default): an append would write twice rows
    another replica wrote meanwhile, a partition overwrite would delete them. A conflict must come back to the
    caller, which filters the rows against the refreshed offsets (or reads the partition again). The property is
    lifted only in this process's copy of the metadata: other engines' writers keep theirs."""
    from pyiceberg.table import Table as IcebergTable
    from pyiceberg.table import TableProperties

    metadata = table.metadata.model_copy(update={"properties": {
        **table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}})
    return IcebergTable(table.name(), metadata, table.metadata_location, table.io, table.catalog)


class CommitConflicts(Exception):
    """Too many other commits in a row; the runtime retries the batch later."""
