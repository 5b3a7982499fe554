"""``passpost consume lakehouse``: every event once in an Apache Iceberg table (see ``table.py``).

Events are gathered until ``PASSPOST_ICEBERG_COMMIT_ROWS`` are waiting or the oldest has waited
``PASSPOST_ICEBERG_COMMIT_SECONDS``, then committed as one snapshot (one file per day partition), so a
quiet day is not thousands of tiny files. Waiting is safe for exactly once: the runtime starts every
assigned partition from the offsets in the table's snapshots (an ``ExactlyOnceConsumer``), not the
consumer group's, so events lost with a killed process are read again, and a commit drops rows the
table already covers.

``reference_value`` is personal data: it goes in only as the analytics store's keyed hash
(``hmac-sha256:`` and HMAC-SHA256 keyed with ``PASSPOST_ANALYTICS_HASH_KEY``), never in clear, whatever
``PASSPOST_ANALYTICS_REFERENCE_VALUE`` says (``drop`` is honoured). The key must be configured: a key
generated and kept in the table's properties would be readable by everyone who reads the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from passpost.consumers.analytics import hashed_references, hmac_pads
from passpost.consumers.analytics.columns import COLUMNS, KEY, columns_of
from passpost.consumers.lakehouse import table as iceberg
from passpost.consumers.runtime import Batch, ExactlyOnceConsumer, RetryLater, identity
from passpost.consumers.runtime.tracing import sink_span
from passpost.errors import one_line
from passpost.settings import Settings, SettingsError
from passpost.topic_metadata import TopicIdentity

if TYPE_CHECKING:
    from pyiceberg.table import Table

__all__ = ["LakehouseConsumer"]

log = logging.getLogger("passpost.lakehouse")


class LakehouseConsumer(ExactlyOnceConsumer):
    name = "lakehouse"
    columnar = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        iceberg.require_extra()
        if settings.analytics_reference_value != "drop" and settings.analytics_hash_key is None:
            raise SettingsError("PASSPOST_ANALYTICS_HASH_KEY: required by the lakehouse (the reference is stored "
                                "as its keyed hash; or set PASSPOST_ANALYTICS_REFERENCE_VALUE=drop)")
        iceberg.catalog_properties(settings)  # a missing catalog or warehouse: one line, before any connection
        self._pads = hmac_pads((settings.analytics_hash_key or "").encode())
        self.table: Table | None = None
        self._offsets = iceberg.OffsetLog()
        self._identities: dict[str, str] = {}
        # Events waiting for the next commit, as columns, and the offsets they (and dead letters) reach.
        self._pending: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self._pending_offsets: dict[iceberg.TopicPartitionKey, int] = {}
        self._pending_since: float | None = None
        self._lock = asyncio.Lock()  # one commit at a time; the table object is not shared between threads
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self.table = await asyncio.to_thread(self._open)
        except Exception as error:  # the catalog's drivers raise their own; the runtime names the consumer
            from passpost.consumers.runtime.errors import CannotRun

            raise CannotRun(f"cannot open the Iceberg table {self.settings.iceberg_table} "
                            f"(PASSPOST_ICEBERG_CATALOG_URI): {one_line(error)}") from None
        self._ticker = asyncio.create_task(self._commit_when_due())

    def _open(self) -> Table:
        return iceberg.ensure_table(iceberg.load_catalog(self.settings), self.settings.iceberg_table)

    async def check_topic(self, topic: str, current: TopicIdentity) -> None:
        assert self.table is not None
        async with self._lock:
            await asyncio.to_thread(self._check_topic, self.table, topic, current)

    def _check_topic(self, table: Table, topic: str, current: TopicIdentity) -> None:
        table.refresh()
        offsets, identities = iceberg.all_offsets(table)
        identity.check(topic, identities.get(topic), current,
                       holds_offsets=any(stored_topic == topic for stored_topic, _ in offsets),
                       store=f"the Iceberg table {self.settings.iceberg_table}",
                       start_over="drop the table (or name another, PASSPOST_ICEBERG_TABLE) to read the topic "
                                  "again from its start")
        self._identities[topic] = current.key()  # kept in the summary of every commit from now on

    async def load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.table is not None
        async with self._lock:
            # What waits is committed first: the runtime seeks to what the table holds, and would otherwise
            # hand those events again.
            await self._commit_pending()
            wanted = [(tp.topic, tp.partition) for tp in partitions]
            table = self.table

            def find() -> dict[iceberg.TopicPartitionKey, int]:
                table.refresh()
                return self._offsets.find(table, wanted)

            stored = await asyncio.to_thread(find)
        return {tp: stored[(tp.topic, tp.partition)] for tp in partitions if (tp.topic, tp.partition) in stored}

    def references(self, values: list[str | None]) -> list[str | None]:
        if self.settings.analytics_reference_value == "drop":
            return [None] * len(values)
        return hashed_references(self._pads, values)

    async def write(self, batch: Batch) -> None:
        columns = batch.columns
        fields = columns.fields
        rows = columns_of(fields, {"reference_value": self.references(fields["reference_value"])},
                          columns.topics, columns.partitions, columns.offsets)
        async with self._lock:
            for name in COLUMNS:
                self._pending[name].extend(rows[name])
            for tp, offset in batch.next_offsets.items():
                key = (tp.topic, tp.partition)
                self._pending_offsets[key] = max(offset, self._pending_offsets.get(key, 0))
            if self._pending_since is None and (rows[KEY] or batch.next_offsets):
                self._pending_since = time.monotonic()
            if len(self._pending[KEY]) >= self.settings.iceberg_commit_rows:
                await self._commit_pending()

    async def _commit_when_due(self) -> None:
        interval = min(1.0, self.settings.iceberg_commit_seconds / 4)
        while not self.stopping.is_set():
            await asyncio.sleep(interval)
            since = self._pending_since
            if since is None or time.monotonic() - since < self.settings.iceberg_commit_seconds:
                continue
            try:
                async with self._lock:
                    await self._commit_pending()
            except RetryLater as error:  # kept pending: the next tick or batch tries again
                log.warning("Iceberg commit failed, will retry: %s", error)
            except Exception as error:  # noqa: BLE001 - the next batch's write meets it and stops the consumer
                log.error("Iceberg commit failed: %s", one_line(error))

    async def _commit_pending(self) -> None:
        """Commit what waits, as one snapshot. Called holding ``_lock``."""
        if self._pending_since is None:
            return
        assert self.table is not None
        pending, offsets = self._pending, dict(self._pending_offsets)
        if not pending[KEY]:
            # Only dead letters or nothing since the last commit: their offsets ride with the next rows rather
            # than making a snapshot without data.
            return
        pending = _first_of_each(pending)
        table, log_, identities = self.table, self._offsets, dict(self._identities)
        try:
            # The batch's sink span when a batch fills the commit; a span of its own when the ticker commits.
            rows = len(pending[KEY])
            with sink_span("commit iceberg", "client", {"db.system.name": "iceberg", "db.operation.name": "commit",
                                                        "db.operation.batch.size": rows, "passpost.rows": rows}):
                result = await asyncio.to_thread(iceberg.commit, table, log_, pending, offsets, identities)
        except (iceberg.CommitConflicts, OSError) as error:
            raise RetryLater(one_line(error)) from error
        except Exception as error:  # the catalog's database or REST server: gone for a while, retried
            if type(error).__module__.partition(".")[0] in {"sqlalchemy", "psycopg", "requests", "pyiceberg"}:
                raise RetryLater(one_line(error)) from error
            raise
        self._pending = {name: [] for name in COLUMNS}
        self._pending_offsets = {}
        self._pending_since = None
        log.info("committed %d events to the Iceberg table (%d already there, %d attempt(s))",
                 result.rows, result.skipped, result.attempts)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.table is not None:
            async with self._lock:
                try:
                    await self._commit_pending()
                except RetryLater as error:  # read again from the table's offsets at the next start
                    log.warning("events not committed at stop (they will be read again): %s", error)


def _first_of_each(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The first delivery of each ``event_id`` among the rows (a postback the vendor sent twice)."""
    ids = columns[KEY]
    if len(set(ids)) == len(ids):
        return columns
    first: dict[str, int] = {}
    for row, event_id in enumerate(ids):
        first.setdefault(event_id, row)
    return iceberg.select_rows(columns, sorted(first.values()))
