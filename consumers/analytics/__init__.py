"""``passpost consume analytics``: every event once in DuckDB or PostgreSQL (see ``store.py``).

Exactly once: the rows of a batch and the offsets after it are written in one
transaction (an ``ExactlyOnceConsumer``), and the runtime resumes from the stored offsets; a
postback delivered twice (same ``event_id``, another offset) is kept once by
``ON CONFLICT (event_id) DO NOTHING``.

``reference_value`` is personal data (an email address or phone number). The default
``hash`` keeps it countable and joinable (same person, same value) without storing it:
HMAC-SHA256 keyed with ``PASSPOST_ANALYTICS_HASH_KEY`` or, when unset, a random key the
store generates once and keeps, so a leaked table cannot be reversed by hashing a phone
book. ``keep`` stores it as sent, ``drop`` stores null.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from passpost.consumers.analytics import serving
from passpost.consumers.analytics.columns import COLUMNS, KEY, TIMESTAMP_COLUMNS, columns_of
from passpost.consumers.analytics.store import Store, StoreUnavailable, extra_json, open_store
from passpost.consumers.runtime import Batch, Columns, ExactlyOnceConsumer, Item, PoisonBatch, RetryLater, identity
from passpost.consumers.runtime.health import Route
from passpost.consumers.runtime.tracing import sink_span
from passpost.errors import one_line
from passpost.schemas.event import EPOCH, PassPostback
from passpost.settings import Settings
from passpost.topic_metadata import TopicIdentity

__all__ = ["AnalyticsConsumer"]


def hmac_pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with its two keyed states made once per key: the event loop hashes every event,
    so each value costs two copies and two updates, not a new ``hmac`` object (BENCHMARKS.md, issue 13)."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(bytes(byte ^ 0x36 for byte in key)), hashlib.sha256(bytes(byte ^ 0x5C for byte in key))


def _hmac(inner: Any, outer: Any, value: str) -> str:
    """``hmac.new(key, value.encode(), hashlib.sha256).hexdigest()``, from ``hmac_pads(key)``."""
    inside = inner.copy()
    inside.update(value.encode())
    result = outer.copy()
    result.update(inside.digest())
    return str(result.hexdigest())


def hashed_references(pads: tuple[Any, Any], values: Sequence[str | None]) -> list[str | None]:
    """``reference_value``s as the stores keep them by default: ``hmac-sha256:`` and the keyed hash, from
    ``hmac_pads(key)``; the analytics and lakehouse consumers hash alike, so their columns join."""
    inner, outer = pads
    return [None if value is None else "hmac-sha256:" + _hmac(inner, outer, value) for value in values]


_SHA256_BLOCK = 64


def _datetime(micros: int | None) -> datetime | None:
    return None if micros is None else EPOCH + timedelta(microseconds=micros)



class AnalyticsConsumer(ExactlyOnceConsumer):
    name = "analytics"
    columnar = True  # the table takes columns: no PassPostback per event (see the runtime's Consumer)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.store: Store | None = None
        self._key: bytes = b""
        self._pads = hmac_pads(b"")
        # One store call at a time: a batch's write and a report's query share the connection.
        self._store_lock = asyncio.Lock()
        self._duckdb = serving.duckdb_path(settings.analytics_dsn)
        self._url: str | None = None

    def routes(self) -> Mapping[str, Route]:
        # DuckDB only: while this process holds the file, no other may read it (see serving.py).
        return {serving.SUMMARY_PATH: self._summary} if self._duckdb is not None else {}

    def serving_at(self, url: str) -> None:
        self._url = url

    async def _summary(self, query: Mapping[str, str]) -> tuple[str, bytes]:
        if self.store is None:
            raise RuntimeError("the store is not open yet")
        now = datetime.fromisoformat(query["now"]) if "now" in query else datetime.now(UTC)
        async with self._store_lock:
            summary = await asyncio.to_thread(self.store.summary, now)
        return "application/json", summary.to_json().encode()

    async def start(self) -> None:
        # The stores' drivers block; one worker thread keeps the event loop (and the
        # group's heartbeats) running while a batch is written.
        self.store = await asyncio.to_thread(open_store, self.settings.analytics_dsn)
        await asyncio.to_thread(self.store.ensure_schema)
        if self.settings.analytics_reference_value == "hash":
            self._key = await asyncio.to_thread(self.store.hash_key, self.settings.analytics_hash_key)
            self._pads = hmac_pads(self._key)
        if self._duckdb is not None and self._url is not None:
            await asyncio.to_thread(serving.advertise, self._duckdb, self._url)

    async def check_topic(self, topic: str, current: TopicIdentity) -> None:
        assert self.store is not None
        async with self._store_lock:
            await asyncio.to_thread(self._check_topic, self.store, topic, current)

    @staticmethod
    def _check_topic(store: Store, topic: str, current: TopicIdentity) -> None:
        # The DSN is not named: it may hold a password.
        identity.check(topic, store.topic_identity(topic), current, holds_offsets=bool(store.load_offsets(topic)),
                       store="the analytics store (PASSPOST_ANALYTICS_DSN)",
                       start_over="`passpost rebuild analytics` empties it and reads the topic again from its start")
        store.set_topic_identity(topic, current.key())

    async def load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.store is not None
        stored: dict[TopicPartition, int] = {}
        for topic in {tp.topic for tp in partitions}:
            async with self._store_lock:
                by_partition = await asyncio.to_thread(self.store.load_offsets, topic)
            stored.update({tp: by_partition[tp.partition] for tp in partitions
                           if tp.topic == topic and tp.partition in by_partition})
        return stored

    async def write(self, batch: Batch) -> None:
        assert self.store is not None
        columns = self.columns(batch.columns)
        offsets = {(tp.topic, tp.partition): offset for tp, offset in batch.next_offsets.items()}
        store = self.store
        retried: tuple[type[BaseException], ...] = (StoreUnavailable, *store.driver_errors)
        try:
            async with self._store_lock:
                # The transaction (rows and offsets together) as the sink's span of the batch.
                rows = len(next(iter(columns.values()), ()))
                with sink_span(f"INSERT {store.system}", "client", {
                        "db.system.name": store.system, "db.operation.name": "INSERT",
                        "db.operation.batch.size": rows, "passpost.rows": rows}):
                    await asyncio.to_thread(store.write, columns, offsets)
        except store.poison_errors as error:  # these rows will never go in: the runtime isolates them
            raise PoisonBatch(one_line(error)) from error
        except retried as error:  # the server, the connection, a lock
            raise RetryLater(one_line(error)) from error

    def references(self, values: list[str | None]) -> list[str | None]:
        """``reference_value`` as stored, by ``PASSPOST_ANALYTICS_REFERENCE_VALUE``."""
        mode = self.settings.analytics_reference_value
        if mode == "keep":
            return values
        if mode == "drop":
            return [None] * len(values)
        return hashed_references(self._pads, values)

    def columns(self, batch: Columns | Sequence[Item]) -> dict[str, list[Any]]:
        """The batch's columns as the store takes them (``Store.write``), in ``columns.COLUMNS`` order, built by
        field name from the decoded columns (one list per column: no Python object per row); the first delivery
        of an ``event_id`` in the batch wins, as the first in the table does."""
        if not isinstance(batch, Columns):
            batch = Columns.of(batch)
        ids = batch.fields[KEY]
        if len(set(ids)) != len(ids):
            first: dict[str, int] = {}
            for row, event_id in enumerate(ids):
                first.setdefault(event_id, row)
            batch = batch.select(sorted(first.values()))
        fields = batch.fields
        return columns_of(fields, {
            "reference_value": self.references(fields["reference_value"]),
            # Most events have no extra entries: "{}" is what extra_json makes of them, without a call.
            "extra": [extra_json(extra) if extra else "{}" for extra in fields["extra"]],
        }, batch.topics, batch.partitions, batch.offsets)

    def row(self, event: PassPostback, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
        """The event's row in ``columns.COLUMNS`` order, built by field name; timestamps as aware datetimes."""
        columns = self.columns([Item(event, topic, partition, offset)])
        return tuple(_datetime(columns[name][0]) if name in TIMESTAMP_COLUMNS else columns[name][0]
                     for name in COLUMNS)

    async def close(self) -> None:
        if self._duckdb is not None:
            serving.withdraw(self._duckdb)
        if self.store is not None:
            async with self._store_lock:
                await asyncio.to_thread(self.store.close)
