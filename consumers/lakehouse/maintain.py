"""``passpost lakehouse maintain``: compact small files, expire old snapshots, keep the offsets.

PyIceberg 0.12 can expire snapshots but has no ``rewrite_data_files``: a day partition holding several files
is compacted by reading it and overwriting it (``overwrite`` filtered on its day; PyIceberg's dynamic partition
overwrite takes identity partitions only), one commit per partition.
Each compaction snapshot carries in its summary the offsets of every partition and the identity of every
topic the table holds, copied forward from the newest snapshots naming them, so that no reader of the
offsets needs the older snapshots. Expiry then removes snapshots older than the cut-off except the current
one and, for every partition and topic, the newest snapshot naming it (needed when no compaction ran since).

A consumer committing while a partition is compacted makes the compaction's commit conflict: that partition
is read again and retried (PyIceberg's own retry would delete the consumer's new file: ``without_retries``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from passpost.consumers.lakehouse import table as iceberg
from passpost.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger("passpost.lakehouse")

EPOCH_DAY = datetime(1970, 1, 1, tzinfo=UTC)
ATTEMPTS = 10


@dataclass(frozen=True)
class Maintenance:
    partitions_compacted: int
    files_before: int
    files_after: int
    snapshots_expired: int
    snapshots_kept: int

    def summary(self) -> str:
        return (f"compacted {self.partitions_compacted} day partition(s): {self.files_before} data files -> "
                f"{self.files_after}; expired {self.snapshots_expired} snapshot(s), {self.snapshots_kept} kept")


def maintain(settings: Settings, *, min_files: int = 2, expire_older_than: timedelta = timedelta(days=1),
             now: datetime | None = None) -> Maintenance:
    table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
    before, compacted = compact(table, min_files)
    after = len(data_files(table))
    expired, kept = expire(table, (now or datetime.now(UTC)) - expire_older_than)
    return Maintenance(compacted, before, after, expired, kept)


def data_files(table: Table) -> dict[str, int | None]:
    """Path -> day partition (days since the epoch) of every data file of the current snapshot."""
    return {task.file.file_path: task.file.partition[0] if len(task.file.partition) else None
            for task in table.scan().plan_files()}


def compact(table: Table, min_files: int) -> tuple[int, int]:
    """Rewrite every day partition holding ``min_files`` files or more as one file (or as few as PyArrow's
    target size makes); (data files before, partitions compacted)."""
    from pyiceberg.exceptions import CommitFailedException

    files = data_files(table)
    by_day: dict[int | None, int] = {}
    for day in files.values():
        by_day[day] = by_day.get(day, 0) + 1
    compacted = 0
    for day, count in sorted(by_day.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        if count < min_files or day is None:
            continue
        start = EPOCH_DAY + timedelta(days=day)
        column = iceberg.PARTITION_COLUMN
        row_filter = (f"{column} >= '{start.isoformat()}' AND "
                      f"{column} < '{(start + timedelta(days=1)).isoformat()}'")
        for attempt in range(1, ATTEMPTS + 1):
            table.refresh()
            offsets, identities = iceberg.all_offsets(table)
            rows = table.scan(row_filter=row_filter).to_arrow()
            once = iceberg.without_retries(table)
            try:
                # The filter is the whole day: the partition's files go by their metadata, none is rewritten.
                once.overwrite(rows, overwrite_filter=row_filter, snapshot_properties=iceberg.summary_properties(
                    offsets, identities))
            except CommitFailedException:
                log.info("compaction of %s conflicted with another commit; reading it again (attempt %d)",
                         start.date(), attempt)
                continue
            table.metadata, table.metadata_location = once.metadata, once.metadata_location
            compacted += 1
            log.info("compacted %s: %d files, %d rows", start.date(), count, rows.num_rows)
            break
        else:
            raise iceberg.CommitConflicts(f"compaction of {start.date()} kept conflicting with other commits")
    return len(files), compacted


def expire(table: Table, older_than: datetime) -> tuple[int, int]:
    """Expire snapshots made before ``older_than`` except those whose offsets or identities are still the
    newest (and the current one); (expired, kept)."""
    from pyiceberg.exceptions import CommitFailedException

    for _ in range(ATTEMPTS):
        table.refresh()
        needed: set[int] = set()
        current = table.current_snapshot()
        if current is not None:
            needed.add(current.snapshot_id)
        found_offsets: set[iceberg.TopicPartitionKey] = set()
        found_identities: set[str] = set()
        for snapshot in iceberg.snapshots_newest_first(table):
            new = set(iceberg.snapshot_offsets(snapshot)) - found_offsets
            new_identities = set(iceberg.snapshot_identities(snapshot)) - found_identities
            if new or new_identities:
                needed.add(snapshot.snapshot_id)
                found_offsets |= new
                found_identities |= new_identities
        cutoff = int(older_than.timestamp() * 1000)
        old = [snapshot.snapshot_id for snapshot in table.metadata.snapshots
               if snapshot.timestamp_ms < cutoff and snapshot.snapshot_id not in needed]
        if not old:
            return 0, len(table.metadata.snapshots)
        try:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        except CommitFailedException:
            continue
        table.refresh()
        return len(old), len(table.metadata.snapshots)
    raise iceberg.CommitConflicts("snapshot expiry kept conflicting with other commits")
