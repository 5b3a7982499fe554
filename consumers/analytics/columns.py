"""The analytics table's columns, derived from the event schema (``schemas/pass_postback.avsc``).

The schema is the one place the event's fields are written out: every field becomes a
column of the same name, in the same order, typed from its Avro type (strings and enum
symbols ``TEXT``, timestamps the store's timestamp type (given to the store as integer microseconds since the
epoch, UTC, as the wire has them), the ``extra`` map the store's
JSON type; a field that may be null is nullable), followed by where the event was read
(``kafka_topic``, ``kafka_partition``, ``kafka_offset``). A batch's columns are built by
name (``columns_of``), so a field added to, moved in or removed from the schema cannot shift
values into another column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from passpost.schemas.codec import SCHEMA


def _sql_type(avro: Any) -> tuple[str, bool]:
    """(SQL type, may be null) of an Avro field type; ``{ts}`` and ``{json}`` are the store's own."""
    if isinstance(avro, list):
        (inner,) = [branch for branch in avro if branch != "null"]
        return _sql_type(inner)[0], True
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-micros":
            return "{ts}", False
        if avro["type"] == "map":
            return "{json}", True  # the store's default ({} arrives as an empty object)
        if avro["type"] == "enum":
            return "TEXT", False
    if avro == "string":
        return "TEXT", False
    raise TypeError(f"no SQL column type for Avro type {avro!r}")


_EVENT_FIELDS: tuple[tuple[str, str, bool], ...] = tuple(
    (field["name"], *_sql_type(field["type"])) for field in SCHEMA["fields"])
KAFKA_COLUMNS = (("kafka_topic", "TEXT", False), ("kafka_partition", "INTEGER", False),
                 ("kafka_offset", "BIGINT", False))

EVENT_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _EVENT_FIELDS)
COLUMNS: tuple[str, ...] = EVENT_COLUMNS + tuple(name for name, _, _ in KAFKA_COLUMNS)
#: The SQL type of each column, ``{ts}`` and ``{json}`` standing for the store's own.
SQL_TYPES: dict[str, str] = {name: sql for name, sql, _ in (*_EVENT_FIELDS, *KAFKA_COLUMNS)}
TIMESTAMP_COLUMNS = tuple(name for name, sql, _ in _EVENT_FIELDS if sql == "{ts}")
JSON_COLUMNS = tuple(name for name, sql, _ in _EVENT_FIELDS if sql == "{json}")
KEY = "event_id"
#: Columns that may hold null.
NULLABLE = tuple(name for name, _, nullable in (*_EVENT_FIELDS, *KAFKA_COLUMNS) if nullable)


def table_definition() -> str:
    """``CREATE TABLE pass_postbacks``, with ``{ts}`` and ``{json}`` left for the store to fill in."""
    columns = []
    for name, sql, nullable in (*_EVENT_FIELDS, *KAFKA_COLUMNS):
        constraint = " PRIMARY KEY" if name == KEY else "" if nullable else " NOT NULL"
        columns.append(f"{name} {sql}{constraint}")
    return f"CREATE TABLE IF NOT EXISTS pass_postbacks ({', '.join(columns)})"


def columns_of(fields: Mapping[str, list[Any]], replaced: dict[str, list[Any]], topics: list[str],
               partitions: list[int], offsets: list[int]) -> dict[str, list[Any]]:
    """The columns of a batch, ``COLUMNS`` order: each event field's values taken by name from ``fields`` (one
    list per field of the event schema), except those ``replaced``, then where each event was read."""
    columns = {name: replaced[name] if name in replaced else fields[name] for name in EVENT_COLUMNS}
    columns.update(kafka_topic=topics, kafka_partition=partitions, kafka_offset=offsets)
    return columns
