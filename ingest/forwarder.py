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
past records Kafka confirmed.

A record spooled because Kafka had not confirmed it by the deadline may still be written
by that first send: the producer keeps retrying it under its sequence number, which the
broker de-duplicates (``Publisher.delivery_seconds``). So the forwarder sends no copy of
such a record while its first send is undecided: it waits for the outcome (``FirstSends``)
and moves past the record if Kafka confirmed it. Only a first send that stays undecided
past that window, or records spooled before a crash, can reach the topic twice (same
event id); ``passpost_spool_duplicate_events`` counts those the producer learns about.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from passpost import tracing
from passpost.backoff import Backoff
from passpost.ingest.publisher import EventTooLarge, NotConfirmed, Publisher
from passpost.ingest.records import Record
from passpost.ingest.spool import Segment, Spool, SpoolMetrics, SpoolRefused
from passpost.ingest.spool_format import Corrupt, Entry, Torn
from passpost.ingest.tracing import forward_traced
from passpost.kafka import KafkaUnavailable
from passpost.settings import Settings

log = logging.getLogger("passpost.ingest.spool")

# Waits between forwarding attempts while Kafka is away: short at first, since most
# outages are a broker restart, then no more than a few seconds.
_BACKOFF = Backoff(initial=0.2, cap=5.0)
_BATCH_BYTES = 1024 * 1024
# Beyond the producer's delivery window, a margin for the last attempt's answer.
_FIRST_SEND_MARGIN_SECONDS = 5.0


class FirstSends:
    """The producer's futures of spooled records whose first send was undecided when they
    were spooled, found again by the record's content when the forwarder reads it back.

    Content, because the spool hands back new objects; two records with the same topic, key
    and value are interchangeable, so which future each one takes does not matter. Only
    records handed to the producer before a deadline are here: a few per outage."""

    def __init__(self) -> None:
        self._by_record: dict[tuple[str, bytes | None, bytes], collections.deque[asyncio.Future[Any]]] = {}

    def keep(self, topic: str, records: Sequence[Record], sends: Sequence[asyncio.Future[Any]]) -> None:
        for (key, value, _), future in zip(records, sends, strict=False):
            self._by_record.setdefault((topic, key, value), collections.deque()).append(future)

    def take(self, entry: Entry) -> asyncio.Future[Any] | None:
        record = (entry.topic, entry.key, entry.value)
        futures = self._by_record.get(record)
        if not futures:
            return None
        future = futures.popleft()
        if not futures:
            del self._by_record[record]
        return future

    def put_back(self, entry: Entry, future: asyncio.Future[Any]) -> None:
        """What ``take`` gave, for the forwarder's next attempt at ``entry``."""
        self._by_record.setdefault((entry.topic, entry.key, entry.value), collections.deque()).appendleft(future)


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
        self.first_sends = FirstSends()

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

    async def publish(self, topic: str, records: Sequence[Record]) -> list[Any] | None:
        """Records to Kafka, else to the spool; ``SpoolRefused`` when the spool cannot keep them. Kafka's
        ``RecordMetadata`` of each when it confirmed them, None when the spool keeps them."""
        why = "records wait behind the spooled ones, Kafka not tried"
        sends: list[asyncio.Future[Any]] = []
        if not self.spool.holding:
            try:
                return await self.publisher.publish(topic, records, keep_sends=True)
            except KafkaUnavailable as unavailable:
                self._suspect = True  # kept below instead of answered 503
                why = str(unavailable)
                if isinstance(unavailable, NotConfirmed):
                    sends = unavailable.sends
        now = time.time()
        entries = [Entry(topic, key, value, list(headers or ()), now) for key, value, headers in records]
        try:
            await self.spool.append(entries)
        except SpoolRefused as error:
            raise type(error)(f"{error} ({why})") from None
        self.first_sends.keep(topic, records, sends)
        return None

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
            if not await self._send_run(segment, run):
                return False
        self._suspect = False
        if self._kafka_down_logged:
            log.warning("Kafka is back; forwarding the spool (%d records left)", self.spool.held)
            self._kafka_down_logged = False
        self._failed_attempts = 0
        return True

    async def _send_run(self, segment: Segment, run: list[tuple[int, int, Entry]]) -> bool:
        """Send records of one topic in order; a record whose first send is undecided is
        waited for first and sent again only if Kafka did not take it. False when Kafka
        did not take the rest."""
        pending: list[tuple[int, int, Entry]] = []
        for item in run:
            first_send = self.first_sends.take(item[2])
            if first_send is None:
                pending.append(item)
                continue
            if not await self._send_pending(segment, pending):
                self.first_sends.put_back(item[2], first_send)
                return False
            pending = [] if await self._first_send_confirmed(first_send) else [item]
            if not pending:
                self.spool.confirmed(segment, item[1], 1)
        return await self._send_pending(segment, pending)

    async def _first_send_confirmed(self, first_send: asyncio.Future[Any]) -> bool:
        window = self.publisher.delivery_seconds + _FIRST_SEND_MARGIN_SECONDS
        await asyncio.wait({first_send}, timeout=window)
        if not first_send.done():
            # Sent again below: if this send is confirmed after all, the record is twice on the topic.
            first_send.add_done_callback(self._count_duplicate)
            return False
        return not first_send.cancelled() and first_send.exception() is None

    def _count_duplicate(self, first_send: asyncio.Future[Any]) -> None:
        if not first_send.cancelled() and first_send.exception() is None:
            self.metrics.duplicates.inc()

    async def _send_pending(self, segment: Segment, run: list[tuple[int, int, Entry]]) -> bool:
        if not run:
            return True
        topic = run[0][2].topic
        records: list[Record] = [(entry.key, entry.value, entry.headers) for _, _, entry in run]
        try:
            tracer = tracing.tracer
            if tracer is None:
                await self.publisher.publish(topic, records, keep_sends=True)
            else:  # a span per record, in the trace of the request that spooled it
                await forward_traced(tracer, lambda: self.publisher.publish(topic, records, keep_sends=True),
                                     topic, records)
        except KafkaUnavailable as error:
            if isinstance(error, NotConfirmed):  # waited for, not sent again, at the next attempt
                self.first_sends.keep(topic, records, error.sends)
            self._note_down(str(error))
            return False
        except EventTooLarge:
            await self._send_one_by_one(segment, run)
            return True
        self.spool.confirmed(segment, run[-1][1], len(run))
        return True

    async def _send_one_by_one(self, segment: Segment, run: list[tuple[int, int, Entry]]) -> None:
        """A run holding a record Kafka refuses as too large (the topic's limit was lowered
        since it was spooled): the others go through, that one is quarantined."""
        for start, end, entry in run:
            while True:
                try:
                    await self.publisher.publish(entry.topic, [(entry.key, entry.value, entry.headers)])
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
