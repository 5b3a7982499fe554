"""A durable local spool for the records Kafka cannot take in time (PASSPOST_SPOOL_DIR).

Vector's disk buffers are the model: a request whose records Kafka does not confirm within
the produce deadline is appended here and answered 200 once the append is on disk
(``fdatasync``), and the forwarder (``passpost.ingest.forwarder``) sends the records to
Kafka in order when it is back. While the spool holds anything, new records are appended
behind the old ones, so that per-key order on the topic is the order of arrival.

Appends are group-committed: while one write and ``fdatasync`` runs (in a thread, so the
event loop keeps serving), the appends that arrive meanwhile queue up and the next round
writes them all with a single sync. Throughput is then bounded by the disk's sync rate
times the number of requests waiting, not by one sync per request.

Files in the directory:

* ``<sequence>.seg``: append-only segments (``spool_format``); the ingress appends to a new
  one at every start and rolls to a new one past ``SEGMENT_BYTES``. A segment is deleted
  once Kafka confirmed every record in it (acks=all).
* ``cursor``: how far into the oldest segment Kafka has confirmed. Written without a sync:
  if it is lost, records after the previous cursor are sent again (same event ids), never
  skipped.
* ``quarantine/``: bytes that are not a valid record, kept for a look, with a metric and a
  log line (never the content: it holds personal data).
* ``lock``: held (flock) while a process uses the directory; a second one refuses to start.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from passpost.errors import ConfigurationError
from passpost.ingest.spool_format import (
    Corrupt,
    Entry,
    Torn,
    encode_entry,
    frame,
    fsync_directory,
    read_batch,
    read_region,
    scan,
    segment_name,
    segment_sequence,
)

log = logging.getLogger("passpost.ingest.spool")

SpooledRecord = tuple[int, int, Entry | Corrupt | Torn]  # (start, end, what is there) in a segment

SEGMENT_BYTES = 16 * 1024 * 1024
_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SpoolDirError(ConfigurationError):
    """PASSPOST_SPOOL_DIR cannot be used; ``str()`` is one line naming it."""


class SpoolRefused(Exception):
    """The spool cannot keep the records: the request is refused (503, ``code``). Not a
    ``KafkaUnavailable``: whether Kafka was tried first is for the message to say."""

    code = "spool_unavailable"


class SpoolFull(SpoolRefused):
    """The spool holds PASSPOST_SPOOL_MAX_BYTES."""

    code = "spool_full"


class SpoolUnavailable(SpoolRefused):
    """Writing to the spool failed (a disk error)."""


class SpoolMetrics:
    """The spool's metrics, registered beside the ingress's when a spool is configured."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.events = Gauge("passpost_spool_events", "Records in the spool not yet confirmed by Kafka.", registry=r)
        self.bytes = Gauge("passpost_spool_bytes", "Bytes the spool's segments take on disk.", registry=r)
        self.capacity = Gauge("passpost_spool_capacity_bytes", "PASSPOST_SPOOL_MAX_BYTES: beyond it, 503.",
                              registry=r)
        self.oldest_age = Gauge("passpost_spool_oldest_event_age_seconds",
                                "Age of the oldest record in the spool (0 when empty).", registry=r)
        self.appended = Counter("passpost_spool_appended_events", "Records appended to the spool (durably).",
                                registry=r)
        self.forwarded = Counter("passpost_spool_forwarded_events", "Spooled records Kafka confirmed.",
                                 registry=r)
        self.duplicates = Counter(
            "passpost_spool_duplicate_events", "Spooled records that Kafka confirmed after all from their first "
            "send: they reach the topic twice, with the same event id.", registry=r)
        self.corrupt = Counter(
            "passpost_spool_corrupt_records", "Spooled records found invalid and quarantined, by kind: checksum "
            "(a bad record before good ones), torn (an incomplete tail after a crash), refused (Kafka refuses it).",
            ["kind"], registry=r)
        self.refusals = Counter("passpost_spool_refusals", "Appends refused (answered 503), by reason: full, error.",
                                ["reason"], registry=r)
        self.append_latency = Histogram("passpost_spool_append_duration_seconds",
                                        "Time from an append to its durable sync (group commit included).",
                                        buckets=_APPEND_BUCKETS, registry=r)
        for kind in ("checksum", "torn", "refused"):
            self.corrupt.labels(kind)
        for reason in ("full", "error"):
            self.refusals.labels(reason)


@dataclass
class Segment:
    sequence: int
    path: str
    size: int  # bytes written and synced: what the forwarder may read


@dataclass
class _Pending:
    data: bytes
    count: int
    future: asyncio.Future[None]


class Spool:
    def __init__(self, directory: str, max_bytes: int, metrics: SpoolMetrics,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._active: Segment | None = None  # the segment appends go to, opened lazily
        self._active_fd: int | None = None
        self._next_sequence = 0
        self._cursor = 0  # offset in _segments[0] up to which Kafka confirmed
        self._held = 0  # records appended or being appended, not yet confirmed
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._disk_bytes = 0
        self._refused = 0  # size of the last append refused as too big, until space is freed
        self._oldest: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self.changed = asyncio.Event()
        metrics.capacity.set(max_bytes)
        metrics.events.set_function(lambda: self._held)
        metrics.bytes.set_function(lambda: self._disk_bytes + self._pending_bytes)
        metrics.oldest_age.set_function(self._oldest_age)

    # ------------------------------------------------------------------ state

    @property
    def holding(self) -> bool:
        """True while anything is spooled or being spooled: new records must queue behind it."""
        return self._held > 0 or bool(self._pending)

    @property
    def held(self) -> int:
        return self._held

    @property
    def accepting(self) -> bool:
        """False from the first append refused as too big for what is left until space is freed."""
        return self._disk_bytes + self._pending_bytes + self._refused < self.max_bytes

    def _oldest_age(self) -> float:
        return 0.0 if self._oldest is None or not self.holding else max(0.0, time.time() - self._oldest)

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Take the directory, cut torn tails and count what an earlier run left to forward."""
        setting = "PASSPOST_SPOOL_DIR"
        try:
            os.makedirs(os.path.join(self.directory, "quarantine"), exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise SpoolDirError(f"{setting}: cannot use {self.directory}: {error.strerror or error}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolDirError(f"{setting}: {self.directory} is in use by another passpost process") from None
            raise SpoolDirError(f"{setting}: cannot lock {self.directory}: {error.strerror or error}") from None
        if not os.access(self.directory, os.W_OK):
            raise SpoolDirError(f"{setting}: {self.directory} is not writable")
        names = sorted(name for name in os.listdir(self.directory) if segment_sequence(name) is not None)
        cursor_sequence, cursor = self._read_cursor()
        for name in names:
            sequence = segment_sequence(name)
            assert sequence is not None
            if cursor_sequence is not None and sequence < cursor_sequence:
                # Confirmed before the cursor moved past it; only its deletion was lost.
                os.unlink(os.path.join(self.directory, name))
                continue
            start = cursor if sequence == cursor_sequence else 0
            self._recover(Segment(sequence, os.path.join(self.directory, name), 0), start)
        if self._segments and self._segments[0].sequence == cursor_sequence:
            self._cursor = min(cursor, self._segments[0].size)
        # Past every name used so far, the cursor's included: a segment numbered below a
        # stale cursor would be taken for one already forwarded at the next start.
        used = [segment_sequence(name) or 0 for name in names[-1:]] + [cursor_sequence or 0]
        self._next_sequence = max(used) + 1 if names or cursor_sequence is not None else 0
        if self._held:
            log.warning("the spool holds %d records from an earlier run; forwarding them to Kafka", self._held)

    def _read_cursor(self) -> tuple[int | None, int]:
        try:
            with open(os.path.join(self.directory, "cursor")) as file:
                sequence, offset = file.read().split()
            return int(sequence), int(offset)
        except (OSError, ValueError):
            return None, 0  # none, or torn by a crash: forward from the segment's start (duplicates, no loss)

    def _recover(self, segment: Segment, start: int) -> None:
        with open(segment.path, "rb") as file:
            data = file.read()
        segment.size = len(data)
        if start > len(data):
            start = 0
        records = 0
        corrupt = False
        for item_start, item_end, item in scan(data[start:], start):
            if isinstance(item, Torn):
                # A crash mid-append: that request was never answered 200, so nothing is lost.
                self._quarantine_bytes(segment, item_start, data[item_start:item_end])
                with open(segment.path, "r+b") as file:
                    file.truncate(item_start)
                    os.fsync(file.fileno())
                segment.size = item_start
                self.metrics.corrupt.labels("torn").inc()
                log.warning("spool segment %s: cut an incomplete tail of %d bytes at offset %d (quarantined)",
                            os.path.basename(segment.path), item_end - item_start, item_start)
            elif isinstance(item, Corrupt):
                corrupt = True  # counted and quarantined when the forwarder reaches it
            else:
                records += 1
                if self._oldest is None:
                    self._oldest = item.spooled_at
        if records == 0 and not corrupt:
            os.unlink(segment.path)
            return
        self._held += records
        self._disk_bytes += segment.size
        self._segments.append(segment)

    # ------------------------------------------------------------------ appending

    async def append(self, entries: list[Entry]) -> None:
        """Append ``entries`` and return once they are on disk; raise ``SpoolFull`` or
        ``SpoolUnavailable``. The records count as held from the call on, before any
        await, so that a request arriving meanwhile queues behind them."""
        data = b"".join(frame(encode_entry(entry)) for entry in entries)
        if self._disk_bytes + self._pending_bytes + len(data) > self.max_bytes:
            self.metrics.refusals.labels("full").inc()
            self._refused = max(1, len(data))
            raise SpoolFull(f"the spool holds {self._disk_bytes + self._pending_bytes} of {self.max_bytes} bytes")
        started = time.perf_counter()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(data, len(entries), future))
        self._pending_bytes += len(data)
        self._held += len(entries)
        if self._oldest is None or self._held == len(entries):
            self._oldest = entries[0].spooled_at
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())
        await asyncio.shield(future)  # a client that hangs up does not undo a durable append
        self.metrics.append_latency.observe(time.perf_counter() - started)

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            data = b"".join(pending.data for pending in batch)
            count = sum(pending.count for pending in batch)
            try:
                if self._active is None or self._active.size >= self.segment_bytes:
                    await self._roll()
                assert self._active is not None and self._active_fd is not None
                await asyncio.to_thread(_write_and_sync, self._active_fd, self._active.size, data)
            except OSError as error:
                self._pending_bytes -= len(data)
                self._held -= count
                self.metrics.refusals.labels("error").inc(len(batch))
                log.error("could not write to the spool in %s: %s", self.directory, error.strerror or error)
                for pending in batch:
                    pending.future.set_exception(SpoolUnavailable(f"the spool cannot be written: {error}"))
                    pending.future.exception()  # retrieved: the request may be gone already
                continue
            self._pending_bytes -= len(data)
            self._active.size += len(data)
            self._disk_bytes += len(data)
            self.metrics.appended.inc(count)
            for pending in batch:
                pending.future.set_result(None)
            self.changed.set()

    async def _roll(self) -> None:
        sequence = self._next_sequence
        path = os.path.join(self.directory, segment_name(sequence))
        fd = await asyncio.to_thread(_create_segment, self.directory, path)
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._next_sequence += 1
        self._active = Segment(sequence, path, 0)
        self._active_fd = fd
        self._segments.append(self._active)

    # ------------------------------------------------------------------ forwarding

    async def read(self, max_bytes: int = 1024 * 1024) -> tuple[Segment, list[SpooledRecord]] | None:
        """The next records to forward from the oldest segment (or one invalid region),
        None when every written record has been read and confirmed."""
        while self._segments:
            segment = self._segments[0]
            if self._cursor < segment.size:
                items = await asyncio.to_thread(read_batch, segment.path, self._cursor, segment.size, max_bytes)
                return segment, items
            if segment is self._active:
                break
            self._free_oldest()
        self._maybe_reset()
        return None

    def confirmed(self, segment: Segment, end: int, count: int) -> None:
        """Kafka confirmed ``count`` records of ``segment`` up to offset ``end``."""
        assert self._segments and self._segments[0] is segment
        self._cursor = end
        self._held = max(0, self._held - count)
        self.metrics.forwarded.inc(count)
        if self._cursor >= segment.size and segment is not self._active:
            self._free_oldest()
        elif not self._maybe_reset():
            self._write_cursor()

    def quarantine(self, segment: Segment, item: Corrupt | Torn, kind: str, records: int = 0) -> None:
        """Set bytes aside that cannot be forwarded, count them and move past them."""
        self._quarantine_bytes(segment, item.start, read_region(segment.path, item.start, item.end))
        self.metrics.corrupt.labels(kind).inc()
        log.error("spool segment %s: %d bytes at offset %d are not a valid record (%s); quarantined",
                  os.path.basename(segment.path), item.end - item.start, item.start, kind)
        self._cursor = item.end
        self._held = max(0, self._held - records)
        if self._cursor >= segment.size and segment is not self._active:
            self._free_oldest()
        else:
            self._write_cursor()

    def note_oldest(self, spooled_at: float) -> None:
        """The oldest record not yet confirmed was spooled at ``spooled_at``."""
        self._oldest = spooled_at

    def _free_oldest(self) -> None:
        segment = self._segments.pop(0)
        self._refused = 0
        self._cursor = 0
        self._disk_bytes -= segment.size
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        self._write_cursor()

    def _maybe_reset(self) -> bool:
        """When everything written was confirmed and nothing is being written, start over:
        the spool is empty and requests go straight to Kafka again."""
        if self._pending or (self._writer is not None and not self._writer.done()):
            return False
        if len(self._segments) > 1 or (self._segments and self._cursor < self._segments[0].size):
            return False
        self._held = 0
        self._oldest = None
        self._refused = 0
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        self._active = None
        for segment in self._segments:
            self._disk_bytes -= segment.size
            try:
                os.unlink(segment.path)
            except FileNotFoundError:
                pass
        self._segments = []
        self._cursor = 0
        try:
            os.unlink(os.path.join(self.directory, "cursor"))
        except FileNotFoundError:
            pass
        return True

    def _write_cursor(self) -> None:
        if not self._segments:
            return
        path = os.path.join(self.directory, "cursor")
        with open(path + ".tmp", "w") as file:
            file.write(f"{self._segments[0].sequence} {self._cursor}\n")
        os.replace(path + ".tmp", path)

    def _quarantine_bytes(self, segment: Segment, offset: int, data: bytes) -> None:
        name = f"{os.path.basename(segment.path)}.{offset}.bad"
        with open(os.path.join(self.directory, "quarantine", name), "wb") as file:
            file.write(data)

    async def wait_for_records(self, timeout: float) -> None:
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            pass

    def close(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _create_segment(directory: str, path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fsync_directory(directory)  # the segment's name must survive a crash as well as its bytes
    return fd


def _write_and_sync(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
        os.fdatasync(fd)
    except OSError:
        # Never leave half a batch for the next append to follow: cut back to the last sync.
        try:
            os.ftruncate(fd, offset)
        except OSError:
            pass
        raise

