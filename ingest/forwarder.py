"""The ingress's publisher with a spool behind it (PASSPOST_SPOOL_DIR), and its forwarder.

``SpoolingPublisher`` has the ``Publisher``'s interface, so the endpoints do not know
whether a spool is configured:

* while the spool is empty, records go to Kafka as before; records Kafka does not confirm
  within the produce deadline (or cannot take: no connection, a refusal) are appended to
  the spool, and the request is answered 200 once they are on disk;
* while the spool holds anything, new records are appended behind them, so that a key's
  records reach the topic in the order they arrived;
* a full or unwritable spool raises ``SpoolRefused``: the request is answered 503.

The forwarder sends spooled records through the same idempotent producer (acks=all), in
order, with their keys, headers and values as spooled, and moves the spool's cursor only
past records Kafka confirmed. Records whose first send Kafka confirms after the deadline
reach the topic twice, with the same event id: ``passpost_spool_duplicate_events`` counts
those the producer learns about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from passpost.backoff import Backoff
from passpost.ingest.publisher import EventTooLarge, Publisher
from passpost.ingest.records import Record
from passpost.ingest.spool import Segment, Spool, SpoolMetrics, SpoolRefused
from passpost.ingest.spool_format import Corrupt, Entry, Torn
from passpost.kafka import KafkaUnavailable
from passpost.settings import Settings

log = logging.getLogger("passpost.ingest.spool")

# Waits between forwarding attempts while Kafka is away: short at first, since most
# outages are a broker restart, then no more than a few seconds.
_BACKOFF = Backoff(initial=0.2, cap=5.0)
_BATCH_BYTES = 1024 * 1024


class SpoolingPublisher:
    def __init__(self, settings: Settings, publisher: Publisher, spool: Spool, metrics: SpoolMetrics) -> None:
        self._settings = settings
        self.publisher = publisher
        self.spool = spool
        self.metrics = metrics
        self._forwarder: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failed_attempts = 0
        self._kafka_down_logged = False
        self._suspect = False  # True while Kafka seems away: the forwarder then probes with one record

    @property
    def schema_id(self) -> int | None:
        return self.publisher.schema_id

    async def start(self) -> None:
        """Start the producer if Kafka answers; with a spool, an unreachable Kafka is no
        reason not to serve: postbacks are spooled until it is back."""
        if self._forwarder is not None:
            return
        # Bounded by the produce deadline: a broker that accepts connections but does not
        # answer (paused, overloaded) must not keep the ingress from listening.
        self._starting = asyncio.get_running_loop().create_task(self.publisher.start())
        await asyncio.wait({self._starting}, timeout=self._settings.produce_timeout_seconds)
        if self._starting.done():
            error = self._starting.exception()
            if isinstance(error, KafkaUnavailable):
                log.warning("Kafka is unreachable at start (%s); postbacks are spooled until it is back", error)
            elif error is not None:
                raise error  # e.g. the schema registry refusing: one line at start-up, as without a spool
        else:
            log.warning("Kafka does not answer yet; postbacks are spooled until it does")
        self._forwarder = asyncio.get_running_loop().create_task(self._forward(), name="spool-forwarder")

    async def stop(self) -> None:
        """Forward what can be forwarded within PASSPOST_SPOOL_DRAIN_SECONDS, then stop;
        the rest stays in the spool for the next start."""
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            self._stopping.set()
            self.spool.changed.set()
            try:
                await asyncio.wait_for(asyncio.shield(forwarder), self._settings.spool_drain_seconds)
            except TimeoutError:
                forwarder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forwarder
            if self.spool.held:
                log.warning("stopping with %d records in the spool; they are forwarded at the next start",
                            self.spool.held)
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        await self.publisher.stop()
        self.spool.close()

    async def ready(self) -> bool:
        """Ready while the spool accepts: a Kafka outage alone is no reason to send traffic elsewhere."""
        return self.spool.accepting

    async def publish(self, topic: str, records: Sequence[Record]) -> None:
        """Records to Kafka, else to the spool; ``SpoolRefused`` when the spool cannot keep them."""
        why = "records wait behind the spooled ones, Kafka not tried"
        if not self.spool.holding:
            try:
                await self.publisher.publish(topic, records, late=self.metrics.duplicates.inc)
                return
            except KafkaUnavailable as unavailable:
                self._suspect = True  # kept below instead of answered 503
                why = str(unavailable)
        now = time.time()
        entries = [Entry(topic, key, value, list(headers or ()), now) for key, value, headers in records]
        try:
            await self.spool.append(entries)
        except SpoolRefused as error:
            raise type(error)(f"{error} ({why})") from None

    # ------------------------------------------------------------------ the forwarder

    async def _forward(self) -> None:
        while True:
            if self._stopping.is_set() and not self.spool.held:
                return
            # While Kafka seems away, probe with the oldest record alone: whatever is sent
            # during an outage may land when it ends *and* be sent again, and that should be
            # one record that was in flight anyway, not a batch of later ones.
            batch = await self.spool.read(1 if self._suspect else _BATCH_BYTES)
            if batch is None:
                if self._stopping.is_set():
                    return
                await self.spool.wait_for_records(1.0)
                continue
            segment, items = batch
            first = items[0][2]
            if isinstance(first, (Corrupt, Torn)):
                # A torn tail found at run time (not after a crash) is corruption too.
                self.spool.quarantine(segment, first, "checksum")
                continue
            if not await self._send(segment, items):
                await self._wait_before_retry()

    async def _send(self, segment: Segment, items: list[tuple[int, int, Entry | Corrupt | Torn]]) -> bool:
        """Send the batch, run by run of one topic; False when Kafka did not take it."""
        if not self.publisher.running:
            if self._starting is None or self._starting.done():
                if self._starting is not None and self._starting.exception() is not None:
                    self._note_down(str(self._starting.exception()))
                self._starting = asyncio.get_running_loop().create_task(self.publisher.start())
            await asyncio.wait({self._starting}, timeout=_BACKOFF.cap)
            if not self.publisher.running:
                self._suspect = True
                return False
        runs: list[list[tuple[int, int, Entry]]] = []
        for start, end, item in items:
            assert isinstance(item, Entry)
            if runs and runs[-1][0][2].topic == item.topic:
                runs[-1].append((start, end, item))
            else:
                runs.append([(start, end, item)])
        self.spool.note_oldest(runs[0][0][2].spooled_at)
        for run in runs:
            records: list[Record] = [(entry.key, entry.value, entry.headers) for _, _, entry in run]
            try:
                await self.publisher.publish(run[0][2].topic, records, late=self.metrics.duplicates.inc)
            except KafkaUnavailable as error:
                self._note_down(str(error))
                return False
            except EventTooLarge:
                await self._send_one_by_one(segment, run)
                continue
            self.spool.confirmed(segment, run[-1][1], len(run))
        self._suspect = False
        if self._kafka_down_logged:
            log.warning("Kafka is back; forwarding the spool (%d records left)", self.spool.held)
            self._kafka_down_logged = False
        self._failed_attempts = 0
        return True

    async def _send_one_by_one(self, segment: Segment, run: list[tuple[int, int, Entry]]) -> None:
        """A run holding a record Kafka refuses as too large (the topic's limit was lowered
        since it was spooled): the others go through, that one is quarantined."""
        for start, end, entry in run:
            while True:
                try:
                    await self.publisher.publish(entry.topic, [(entry.key, entry.value, entry.headers)],
                                                 late=self.metrics.duplicates.inc)
                except EventTooLarge:
                    self.spool.quarantine(segment, Corrupt(start, end), "refused", records=1)
                except KafkaUnavailable as error:
                    self._note_down(str(error))
                    await self._wait_before_retry()
                    continue
                else:
                    self.spool.confirmed(segment, end, 1)
                break

    def _note_down(self, reason: str) -> None:
        self._suspect = True
        if not self._kafka_down_logged:
            log.warning("cannot forward the spool yet (%d records): %s", self.spool.held, reason)
            self._kafka_down_logged = True

    async def _wait_before_retry(self) -> None:
        delay = _BACKOFF.delay(self._failed_attempts)
        self._failed_attempts += 1
        # Shutting down with Kafka away: nothing more will be forwarded in time.
        await asyncio.sleep(min(delay, 0.5) if self._stopping.is_set() else delay)


def publisher_for(settings: Settings, publisher: Publisher, metrics_registry: object) -> Publisher | SpoolingPublisher:
    """The ingress's publisher: ``publisher`` itself, or with the spool behind it when
    PASSPOST_SPOOL_DIR is set (the spool is opened here: a bad directory is one line)."""
    if settings.spool_dir is None:
        return publisher
    from prometheus_client import CollectorRegistry

    assert isinstance(metrics_registry, CollectorRegistry)
    metrics = SpoolMetrics(metrics_registry)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes, metrics)
    spool.open()
    return SpoolingPublisher(settings, publisher, spool, metrics)
