"""The analytics store: DuckDB or PostgreSQL, same tables, rows and offsets in one transaction.

Schema (both stores):
- ``pass_postbacks``: one row per ``event_id`` (primary key), every event field plus
  ``kafka_topic``, ``kafka_partition`` and ``kafka_offset`` of its first delivery
  (``offset`` and ``partition`` are SQL keywords); ``extra`` as JSON; timestamps in UTC.
  Indexes on ``serial_number``, ``custom_pass_id`` and ``(outcome, received_at)`` on
  PostgreSQL (DuckDB: its zone maps, see ``DuckDBStore.schema_statements``).
- ``pass_postbacks_hourly(hour, origin, status_code, outcome, postbacks)``: hour of
  ``generated_at`` (when the vendor made the pass), falling back to ``received_at`` when
  the TIMESTAMP had no offset and ``generated_at`` is null.
- ``passpost_offsets(kafka_topic, kafka_partition, next_offset)``: what the store has consumed.
- ``passpost_meta(name, value)``: the generated hash key (kept across `passpost rebuild`), and
  per topic (``topic_identity:<topic>``) the cluster and topic id its stored offsets were read from.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from passpost.consumers.analytics.columns import (
    COLUMNS,
    JSON_COLUMNS,
    KEY,
    NULLABLE,
    SQL_TYPES,
    TIMESTAMP_COLUMNS,
    table_definition,
)
from passpost.errors import PasspostError

# Derived from the event schema (columns.py): the .avsc is the one list of the event's fields.
_TABLE = table_definition()
_SCHEMA = [
    ("CREATE TABLE IF NOT EXISTS passpost_offsets (kafka_topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, "
     "next_offset BIGINT NOT NULL, PRIMARY KEY (kafka_topic, kafka_partition))"),
    "CREATE TABLE IF NOT EXISTS passpost_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pass_postbacks_serial_number ON pass_postbacks (serial_number)",
    "CREATE INDEX IF NOT EXISTS pass_postbacks_custom_pass_id ON pass_postbacks (custom_pass_id)",
    "CREATE INDEX IF NOT EXISTS pass_postbacks_outcome_received_at ON pass_postbacks (outcome, received_at)",
    ("CREATE OR REPLACE VIEW pass_postbacks_hourly AS SELECT date_trunc('hour', coalesce(generated_at, received_at)) "
     "AS hour, origin, status_code, outcome, count(*) AS postbacks FROM pass_postbacks GROUP BY 1, 2, 3, 4"),
]
_UPSERT_OFFSET = ("INSERT INTO passpost_offsets VALUES ({p}, {p}, {p}) ON CONFLICT (kafka_topic, kafka_partition) "
                  "DO UPDATE SET next_offset = excluded.next_offset")


class StoreUnavailable(PasspostError):
    """The store cannot be reached or refused the write. The message is one line."""


class StoreLocked(StoreUnavailable):
    """Another process writes the DuckDB file (DuckDB allows one writer process, and no reader beside it)."""


@dataclass(frozen=True)
class Summary:
    total: int
    by_outcome: list[tuple[str, int]]
    by_status_code: list[tuple[str, str, int]]
    last_24h: list[tuple[datetime, int, int]]  # hour, postbacks, failures
    latest_failures: list[tuple[datetime, str, str, str | None, str | None]]
    since: datetime  # the first hour of last_24h
    latest: datetime | None  # hour of the newest postback (generated_at, else received_at), as last_24h counts

    def to_json(self) -> str:
        """For `passpost report` asking a running consumer (``serving.py``): datetimes in ISO 8601."""
        def plain(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, list | tuple):
                return [plain(item) for item in value]
            return value

        return json.dumps({name: plain(getattr(self, name)) for name in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str) -> Summary:
        raw = json.loads(text)

        def moment(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value)

        return cls(
            total=raw["total"], by_outcome=[(o, n) for o, n in raw["by_outcome"]],
            by_status_code=[(s, o, n) for s, o, n in raw["by_status_code"]],
            last_24h=[(datetime.fromisoformat(h), n, f) for h, n, f in raw["last_24h"]],
            latest_failures=[(datetime.fromisoformat(r), s, o, serial, custom)
                             for r, s, o, serial, custom in raw["latest_failures"]],
            since=datetime.fromisoformat(raw["since"]), latest=moment(raw["latest"]))


def _utc(value: datetime) -> datetime:
    # DuckDB's TIMESTAMP is naive UTC; PostgreSQL's TIMESTAMPTZ is aware.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Store(abc.ABC):
    """SQL both stores share; subclasses connect and move the rows.

    ``write`` raises the driver's own errors; ``poison_errors`` are those the same rows will
    always meet (bad data: the consumer dead-letters them), ``driver_errors`` all of the driver's
    (a server gone, a lock: the consumer retries)."""

    param = "?"
    system = "sql"  # the database's name in the OpenTelemetry conventions (db.system.name), for the write's span
    poison_errors: tuple[type[BaseException], ...] = ()
    driver_errors: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (none for a statement without a result)."""

    @abc.abstractmethod
    def schema_statements(self) -> list[str]:
        """The statements that create the tables, views and indexes (idempotent)."""

    def ensure_schema(self) -> None:
        for statement in self.schema_statements():
            self._execute(statement)

    def hash_key(self, configured: str | None) -> bytes:
        """The configured key, else one this store generated once and keeps."""
        if configured:
            return configured.encode()
        rows = self._execute("SELECT value FROM passpost_meta WHERE name = 'hash_key'")
        if not rows:
            self._execute(f"INSERT INTO passpost_meta VALUES ('hash_key', {self.param}) ON CONFLICT DO NOTHING",
                          [secrets.token_hex(32)])
            rows = self._execute("SELECT value FROM passpost_meta WHERE name = 'hash_key'")
        return str(rows[0][0]).encode()

    def load_offsets(self, topic: str) -> dict[int, int]:
        rows = self._execute(f"SELECT kafka_partition, next_offset FROM passpost_offsets WHERE kafka_topic = "
                             f"{self.param}", [topic])
        return {int(partition): int(offset) for partition, offset in rows}

    def topic_identity(self, topic: str) -> str | None:
        rows = self._execute(f"SELECT value FROM passpost_meta WHERE name = {self.param}", [_identity_name(topic)])
        return str(rows[0][0]) if rows else None

    def set_topic_identity(self, topic: str, key: str) -> None:
        self._execute(f"INSERT INTO passpost_meta VALUES ({self.param}, {self.param}) ON CONFLICT (name) "
                      f"DO UPDATE SET value = excluded.value", [_identity_name(topic), key])

    def count(self) -> int:
        return int(self._execute("SELECT count(*) FROM pass_postbacks")[0][0])

    @abc.abstractmethod
    def truncate(self) -> None:
        """Delete every row and every offset, in one transaction."""

    @abc.abstractmethod
    def write(self, columns: Mapping[str, Sequence[Any]], offsets: dict[tuple[str, int], int]) -> None:
        """Insert the rows whose values ``columns`` hold by column name (every column of ``COLUMNS``, lists of
        the same length; timestamps as integer microseconds since the epoch, UTC; a known ``event_id`` is
        skipped) and upsert ``offsets``, in one transaction."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def summary(self, now: datetime) -> Summary:
        p = self.param
        since = self._since(now)
        latest = self._execute("SELECT max(hour) FROM pass_postbacks_hourly")[0][0]
        return Summary(
            total=self.count(),
            by_outcome=[(str(o), int(n)) for o, n in self._execute(
                "SELECT outcome, count(*) FROM pass_postbacks GROUP BY 1 ORDER BY 2 DESC")],
            by_status_code=[(str(s), str(o), int(n)) for s, o, n in self._execute(
                "SELECT status_code, outcome, count(*) FROM pass_postbacks GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 20")],
            last_24h=[(_utc(h), int(n), int(f)) for h, n, f in self._execute(
                f"SELECT hour, sum(postbacks), sum(CASE WHEN outcome = 'FAILURE' THEN postbacks ELSE 0 END) "
                f"FROM pass_postbacks_hourly WHERE hour >= {p} GROUP BY 1 ORDER BY 1", [since])],
            latest_failures=[(_utc(r), str(s), str(o), serial, custom) for r, s, o, serial, custom in self._execute(
                "SELECT received_at, status_code, origin, serial_number, custom_pass_id FROM pass_postbacks "
                "WHERE outcome = 'FAILURE' ORDER BY received_at DESC LIMIT 10")],
            since=_utc(since),
            latest=None if latest is None else _utc(latest),
        )

    def _since(self, now: datetime) -> Any:
        return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)


#: DuckDB settings the store opens its file with, unless the DSN's query sets them. DuckDB keeps every block of
#: the file it has read or written cached up to its memory limit, 80% of the machine's by default, so without a
#: limit the consumer's memory grows with the table. The limit bounds that cache (BENCHMARKS.md, issue 13).
#: One DuckDB thread: the consumer's event loop decodes the next batch while DuckDB writes this one, so a
#: second DuckDB thread competed with it for the cores (0.67 -> 0.76 of the bare loop, BENCHMARKS.md,
#: issue 22), and a pod's CPU limit is not what DuckDB counts its threads from (the host's cores).
DUCKDB_DEFAULTS: dict[str, str] = {"memory_limit": "64MB", "threads": "1"}
#: The primary key's index (ART) cannot be evicted, grows with the table (about 67 bytes a random
#: ``event_id``) and counts against the limit: with the limit fixed, a checkpoint of a table of some 700,000
#: rows failed to pin a block and DuckDB invalidated the database (the consumer then fails at every start).
#: So the limit is the cache's budget plus the index, twice over for a checkpoint's copy, raised as it grows.
_INDEX_HEADROOM = 2
_LIMIT_STEP_BYTES = 8 * 1024 * 1024  # raised this far past what the index needs: no SET per batch


class DuckDBStore(Store):
    """One writer process per file (DuckDB's own lock); timestamps are naive UTC ``TIMESTAMP``."""

    system = "duckdb"

    def __init__(self, path: str, *, read_only: bool = False, config: Mapping[str, str] | None = None) -> None:
        """Batches go in as tab-separated text DuckDB's CSV reader parses (see ``write``). ``config``: DuckDB
        settings (the DSN's query, ``duckdb:///file?memory_limit=256MB&threads=1``) over ``DUCKDB_DEFAULTS``."""
        import duckdb

        self._duckdb = duckdb
        self.poison_errors = (duckdb.ConversionException, duckdb.ConstraintException, duckdb.InvalidInputException)
        # Timestamps arrive as microseconds since the epoch (UTC) for naive UTC TIMESTAMP columns.
        select = ", ".join(f"{name}::JSON" if name in JSON_COLUMNS else
                           f"make_timestamp({name})" if SQL_TYPES[name] == "{ts}" else name for name in COLUMNS)
        # The column lists unnested side by side, one statement per batch: what text cannot carry.
        unnested = ", ".join(f"unnest(${n + 1}) AS {name}" for n, name in enumerate(COLUMNS))
        self._insert_lists = f"INSERT INTO pass_postbacks SELECT {select} FROM (SELECT {unnested})"
        # Beside the file: its folder is writable (DuckDB writes its WAL there), and one writer holds it at a time.
        self._text = f"{path}.incoming.tsv" if path != ":memory:" and not read_only else None
        text_types = {"TEXT": "VARCHAR", "{json}": "VARCHAR", "INTEGER": "INTEGER", "BIGINT": "BIGINT",
                      "{ts}": "BIGINT"}
        text_columns = ", ".join(f"'{name}': '{text_types[SQL_TYPES[name]]}'" for name in COLUMNS)
        self._insert_text = (f"INSERT INTO pass_postbacks SELECT {select} FROM read_csv($1, delim = '\t', "
                             "quote = '', escape = '', nullstr = '\\N', header = false, auto_detect = false, "
                             f"max_line_size = $2, columns = {{{text_columns}}})")
        self.driver_errors = (duckdb.Error,)
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(f"PASSPOST_ANALYTICS_DSN: cannot create the folder {directory} of DuckDB file "
                                   f"{path}: {error.strerror or error}") from None
        try:
            self.connection = duckdb.connect(path, read_only=read_only, config={**DUCKDB_DEFAULTS, **(config or {})})
        except duckdb.Error as error:
            if "Conflicting lock" in str(error):
                raise StoreLocked(f"cannot open DuckDB file {path}: {error}".splitlines()[0]) from None
            given = f" with {'&'.join(f'{name}={value}' for name, value in config.items())}" if config else ""
            raise StoreUnavailable(f"cannot open DuckDB file {path}{given}: {error}".splitlines()[0]) from None
        self.connection.execute("SET TimeZone = 'UTC'")
        self._cache_budget = self._bytes_setting("memory_limit")
        self._limit = self._cache_budget
        if not read_only:
            self._fit_limit_to_index()

    def schema_statements(self) -> list[str]:
        # No secondary indexes on DuckDB: its ART indexes live in memory and slow every
        # batch and grow the consumer's memory with the table (BENCHMARKS.md), while its
        # per-block min/max zone maps already serve the range and equality scans.
        return [_TABLE.format(ts="TIMESTAMP", json="JSON"),
                *(statement for statement in _SCHEMA if not statement.startswith("CREATE INDEX"))]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        result = self.connection.execute(sql, list(params))
        return result.fetchall() if result.description else []

    def _since(self, now: datetime) -> Any:
        return super()._since(now).replace(tzinfo=None)

    def write(self, columns: Mapping[str, Sequence[Any]], offsets: dict[tuple[str, int], int]) -> None:
        # The GIL belongs to the event loop, which has the next batch to decode: DuckDB converts parameter lists
        # value by value holding it, so the batch goes in as one tab-separated text (joined in C) that its CSV
        # reader parses in its own threads. Not Arrow: no faster, and pyarrow is too large to import for it
        # (BENCHMARKS.md). Values text cannot carry (a tab, a line break, "\N") take the lists.
        params: list[Any] | None = None
        insert: str | None = None
        if columns[KEY]:
            text = self._write_text(columns)
            if text is not None:
                params, insert = [self._text, max(_DUCKDB_LINE, text)], self._insert_text
            else:
                params, insert = [list(columns[name]) for name in COLUMNS], self._insert_lists
        try:
            self._write(params, offsets, insert)
        except self._duckdb.ConstraintException:
            # A plain INSERT first, as ON CONFLICT costs more on every row; an event_id already stored
            # (a redelivery, rare) makes it fail: then the batch again, skipping those.
            self._write(params, offsets, insert and insert + " ON CONFLICT (event_id) DO NOTHING")
        self._fit_limit_to_index()

    def _bytes_setting(self, name: str) -> int:
        # fetchall: DuckDB 2 refuses other work on a connection while a result is left part-read (fetchone).
        rows = self.connection.execute("SELECT value FROM duckdb_settings() WHERE name = ?", [name]).fetchall()
        return _parse_bytes(str(rows[0][0])) if rows else 0

    def _fit_limit_to_index(self) -> None:
        """Raise the memory limit to the cache's budget plus the primary key's index (``_INDEX_HEADROOM``).
        After every batch: the query costs about 0.7 ms, in the writer's thread, not the event loop's."""
        [(index_bytes,)] = self.connection.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'").fetchall()
        wanted = self._cache_budget + _INDEX_HEADROOM * int(index_bytes)
        if wanted > self._limit:
            self._limit = wanted + _LIMIT_STEP_BYTES
            self.connection.execute(f"SET memory_limit = '{self._limit // 1024}KiB'")

    def _write_text(self, columns: Mapping[str, Sequence[Any]]) -> int | None:
        """Write the batch to ``self._text`` as tab-separated lines, null as ``\\N``; its size in bytes, or None
        when a value would not read back the same (a tab, a line break, a ``\\N``, a NUL, a leading BOM)."""
        if self._text is None:
            return None
        fields: list[Sequence[Any]] = []
        for name in COLUMNS:
            values = columns[name]
            if SQL_TYPES[name] in _NUMERIC:
                fields.append(list(map(str, values)) if name not in NULLABLE else
                              [_NULL if value is None else str(value) for value in values])
            else:
                fields.append([_NULL if value is None else value for value in values] if name in NULLABLE
                              else values)
        text = "\n".join(map("\t".join, zip(*fields, strict=True)))
        rows = len(columns[KEY])
        nulls = sum(list(columns[name]).count(None) for name in NULLABLE)
        if (text.count("\t") != rows * (len(COLUMNS) - 1) or text.count("\n") != rows - 1 or "\r" in text
                or "\0" in text or text.count(_NULL) != nulls or text.startswith("\ufeff")):
            return None
        try:
            data = (text + "\n").encode()
        except UnicodeError:  # a lone surrogate: the lists say why it cannot go in
            return None
        with open(self._text, "wb") as file:
            file.write(data)
        return len(data)

    def _write(self, params: list[Any] | None, offsets: dict[tuple[str, int], int], insert: str | None) -> None:
        con = self.connection
        con.execute("BEGIN")
        try:
            if insert is not None:
                con.execute(insert, params)
            for (topic, partition), offset in offsets.items():
                con.execute(_UPSERT_OFFSET.format(p="?"), [topic, partition, offset])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def truncate(self) -> None:
        self.connection.execute("BEGIN")
        self.connection.execute("DELETE FROM pass_postbacks")
        self.connection.execute("DELETE FROM passpost_offsets")
        self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()
        if self._text is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._text)


_NUMERIC = ("{ts}", "INTEGER", "BIGINT")
_NULL = "\\N"
_DUCKDB_LINE = 2 * 1024 * 1024  # read_csv's default max_line_size


class PostgresStore(Store):
    """psycopg 3: COPY into the table; when an event_id is already there, COPY into a temporary table, then
    INSERT ... ON CONFLICT."""

    system = "postgresql"

    param = "%s"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.poison_errors = (psycopg.DataError, psycopg.IntegrityError)
        self.driver_errors = (psycopg.Error,)
        self._dsn = dsn
        self.connection = self._connect()

    def _connect(self) -> Any:
        try:
            connection = self._psycopg.connect(self._dsn, connect_timeout=10, autocommit=True)
        except self._psycopg.Error as error:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {str(error).strip().splitlines()[0]}") from None
        return connection

    def schema_statements(self) -> list[str]:
        return [_TABLE.format(ts="TIMESTAMPTZ", json="JSONB"), *_SCHEMA]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params) or None)
            return cursor.fetchall() if cursor.description else []

    def write(self, columns: Mapping[str, Sequence[Any]], offsets: dict[tuple[str, int], int]) -> None:
        # A server restart breaks the connection; the runtime retries the batch, and this
        # reconnects (or raises StoreUnavailable, which is retried too).
        if self.connection.closed or self.connection.broken:
            self.connection = self._connect()
        rows = list(zip(*(_binary(name, columns[name]) for name in COLUMNS))) if columns[KEY] else []
        try:
            self._write(rows, offsets, known_ids=False)
        except self._psycopg.errors.UniqueViolation:
            # COPY straight into the table does half the server's work of a temporary table and
            # INSERT ... ON CONFLICT; an event_id already stored (a redelivery) makes it fail: the batch
            # again that way, skipping those.
            self._write(rows, offsets, known_ids=True)

    def _write(self, rows: list[tuple[Any, ...]], offsets: dict[tuple[str, int], int], *, known_ids: bool) -> None:
        with self.connection.transaction(), self.connection.cursor() as cursor:
            if rows:
                if known_ids:
                    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE pass_postbacks) "
                                   "ON COMMIT DELETE ROWS")
                # Binary: the values go as they are, with no text to escape in Python and none to parse in
                # the server (BENCHMARKS.md, binary COPY).
                with cursor.copy(f"COPY {'incoming' if known_ids else 'pass_postbacks'} ({', '.join(COLUMNS)}) "
                                 "FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_BINARY_TYPES)
                    for row in rows:
                        copy.write_row(row)
                if known_ids:
                    cursor.execute("INSERT INTO pass_postbacks SELECT * FROM incoming ON CONFLICT (event_id) "
                                   "DO NOTHING")
            if offsets:  # one statement, one round trip
                values = ", ".join(["(%s, %s, %s)"] * len(offsets))
                cursor.execute(_UPSERT_OFFSET.replace("({p}, {p}, {p})", values),
                               [value for (topic, partition), offset in offsets.items()
                                for value in (topic, partition, offset)])

    def truncate(self) -> None:
        with self.connection.transaction():
            self._execute("TRUNCATE pass_postbacks, passpost_offsets")

    def close(self) -> None:
        self.connection.close()


_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30,
          "tb": 10**12, "tib": 2**40}


def _parse_bytes(text: str) -> int:
    """DuckDB's ``memory_limit`` as it shows it (``61.0 MiB``, ``64.0 MB``) in bytes; 0 if unreadable."""
    number, _, unit = text.strip().partition(" ")
    try:
        return int(float(number) * _UNITS.get(unit.strip().lower() or "b", 0))
    except ValueError:
        return 0


def open_store(dsn: str, *, read_only: bool = False) -> Store:
    """The store a DSN names; a DuckDB DSN's query holds DuckDB settings
    (``duckdb:///data/analytics.duckdb?memory_limit=256MB``)."""
    if dsn.startswith("duckdb:///"):
        path, _, query = dsn.removeprefix("duckdb:///").partition("?")
        return DuckDBStore(path, read_only=read_only, config=dict(urllib.parse.parse_qsl(query)))
    return PostgresStore(dsn)


# PostgreSQL's binary COPY takes each column in its type's binary form: TEXT as UTF-8, a timestamp as the
# microseconds since 2000-01-01 (an int8's form: our microseconds since 1970, shifted), JSONB as a version byte
# (1) then the JSON text (a bytea's form).
_PG_EPOCH_MICROS = 946_684_800 * 10**6
_BINARY_TYPE = {"TEXT": "text", "{ts}": "int8", "{json}": "bytea", "INTEGER": "int4", "BIGINT": "int8"}
_BINARY_TYPES = [_BINARY_TYPE[SQL_TYPES[name]] for name in COLUMNS]
_EMPTY_JSONB = b"\x01{}"


def _binary(name: str, values: Sequence[Any]) -> Sequence[Any]:
    """A column's values as PostgreSQL's binary COPY takes them (``_BINARY_TYPES``)."""
    if name in TIMESTAMP_COLUMNS:
        shift = _PG_EPOCH_MICROS
        return [None if value is None else value - shift for value in values]
    if name in JSON_COLUMNS:
        return [_EMPTY_JSONB if value == "{}" else None if value is None else b"\x01" + value.encode()
                for value in values]
    return values


def _identity_name(topic: str) -> str:
    return f"topic_identity:{topic}"


def extra_json(extra: dict[str, str]) -> str:
    return json.dumps(extra, ensure_ascii=False, sort_keys=True)
