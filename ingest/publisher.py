"""The ingress's Kafka producer: events and dead letters, confirmed or refused.

A request is answered 200 only after Kafka confirmed every one of its events with
``acks=all`` from an idempotent producer. Waiting is bounded by
``produce_timeout_seconds``; past it, or on any producer error, ``publish`` raises
``KafkaUnavailable`` and the request is answered 503 so that the sender retries.
Records already handed to the producer may still land later: that is at-least-once, and
the event id, derived from the content, makes the duplicate recognisable downstream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    UnknownProducerId,
)

from passpost.errors import describe_error
from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.partitioner import partition_for
from passpost.ingest.records import Record
from passpost.kafka import (
    KafkaUnavailable,
    client_options,
    max_record_bytes,
    start_client,
)
from passpost.schemas.registry import RegistryConfig, RegistryMetrics, RegistryWatch, ensure_registered
from passpost.settings import Settings

log = logging.getLogger("passpost.ingest")

class EventTooLarge(Exception):
    """Kafka refused a record as too large: retrying cannot help."""


class NotConfirmed(KafkaUnavailable):
    """``publish(..., keep_sends=True)`` failed: ``sends`` holds the producer's futures of the
    records it was handed, in order (fewer than the records if it failed while handing them).
    Some may still be confirmed: the spool waits for them before sending its copy."""

    def __init__(self, message: str, sends: list[asyncio.Future[Any]]) -> None:
        super().__init__(message)
        self.sends = sends


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# With a spool, a record past its produce deadline is kept on disk and its first send is
# left to finish: the producer retries it under its sequence number, which the broker
# de-duplicates, until this long after it was handed over. The forwarder waits for that
# outcome before sending the spooled copy, so a broker's death (fenced after about 10 s)
# doubles nothing. Java's producer calls this delivery.timeout.ms; aiokafka uses its
# request timeout for it.
SPOOLED_DELIVERY_SECONDS = 30.0

# Errors after which an idempotent producer's state (producer id, sequence numbers) no
# longer matches the broker's: typically batches expired while the broker was away, so the
# broker sees a gap in the sequence. aiokafka keeps failing every later batch, where the
# Java client would bump its epoch; replacing the producer (a new producer id) recovers.
_BROKEN_PRODUCER_STATE = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


class _Wait:
    """One ``publish`` waiting on Kafka, watched by ``_Deadlines``."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any] | None) -> None:
        self.deadline = deadline
        self.task = task  # None once the wait is over
        self.cancelling = 0 if task is None else task.cancelling()
        self.expired = False

    def timed_out(self) -> bool:
        """After a CancelledError: True if the deadline caused it and nothing else asked to cancel
        the task meanwhile (its cancellation is then withdrawn, so the task carries on)."""
        return self.expired and self.task is not None and self.task.uncancel() <= self.cancelling

    def finish(self) -> None:
        self.task = None


class _Deadlines:
    """Cancels every ``publish`` still waiting ``seconds`` after it began: one sweep every
    ``SWEEP_SECONDS`` for all of them, as ingest/connection.py times out connections.

    ``asyncio.timeout`` cost 4.2 µs a request, a timer of its own 2.3 µs (arming and
    cancelling it, and finding the task: Python 3.11 checks ``os.getpid()`` whenever the
    running loop is asked for); appending to a queue costs a fraction of that. Every wait
    has the same length, so the queue is in deadline order and a sweep looks only at its
    head; a deadline acts up to ``SWEEP_SECONDS`` late."""

    SWEEP_SECONDS = 0.1

    def __init__(self, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        self._seconds = seconds
        self._loop = loop
        self._waiting: collections.deque[_Wait] = collections.deque()
        self._sweeping = False

    def watch(self) -> _Wait:
        """The current task's wait, from now until ``finish()``."""
        loop = self._loop
        wait = _Wait(loop.time() + self._seconds, asyncio.current_task(loop))
        self._waiting.append(wait)
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self.SWEEP_SECONDS, self._sweep)
        return wait

    def _sweep(self) -> None:
        waiting, now = self._waiting, self._loop.time()
        while waiting and (waiting[0].task is None or waiting[0].deadline <= now):
            wait = waiting.popleft()
            if wait.task is not None:
                wait.expired = True
                wait.task.cancel()
        if waiting:
            self._loop.call_later(self.SWEEP_SECONDS, self._sweep)
        else:
            self._sweeping = False


class Publisher:
    def __init__(self, settings: Settings, metrics: IngestMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._produce_latency: dict[str, Any] = {}
        self._producer: AIOKafkaProducer | None = None
        self._deadlines: _Deadlines | None = None  # made by start(), on the loop it runs in
        self._replacing: asyncio.Task[None] | None = None
        self._ready_checked_at = 0.0
        self._ready = False
        # Set at start when PASSPOST_SCHEMA_REGISTRY_URL is: events are then Confluent-framed.
        self.schema_id: int | None = None
        self._registry = RegistryConfig.from_settings(settings)
        self._watch: RegistryWatch | None = None

    @property
    def delivery_seconds(self) -> float:
        """How long the producer keeps trying a record it was handed."""
        if self._settings.spool_dir is None:
            return self._settings.produce_timeout_seconds
        return max(SPOOLED_DELIVERY_SECONDS, self._settings.produce_timeout_seconds)

    def _build(self) -> AIOKafkaProducer:
        settings = self._settings
        return AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
            linger_ms=settings.kafka_linger_ms,
            partitioner=partition_for,
            max_batch_size=64 * 1024,
            max_request_size=max_record_bytes(settings),
            # Without a spool, below the sender's 10 s: a record the producer cannot confirm
            # fails in time. (The request itself is answered at the deadline either way.)
            request_timeout_ms=int(self.delivery_seconds * 1000),
        )

    @property
    def running(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect to Kafka; a no-op when already started."""
        if self._producer is not None:
            return
        if self._registry is not None and self.schema_id is None:
            # Before Kafka: a registry that refuses or does not answer is one line at start-up
            # (RegistryUnavailable); later the id learnt here is all the ingress needs.
            self.schema_id = await ensure_registered(self._registry, self._settings.events_topic,
                                                     auto_register=self._settings.schema_registry_auto_register)
            self._watch = RegistryWatch(self._registry, self._settings.events_topic, self.schema_id,
                                        RegistryMetrics(self._metrics.registry))
            self._watch.start()
        producer = self._build()
        await start_client(producer, self._settings)
        self._deadlines = _Deadlines(self._settings.produce_timeout_seconds, asyncio.get_running_loop())
        self._producer = producer
        self._ready = True
        self._ready_checked_at = time.monotonic()

    async def stop(self) -> None:
        """Flush what is in flight and close. Safe to call twice."""
        producer, self._producer = self._producer, None
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._replacing is not None:
            self._replacing.cancel()
        if producer is not None:
            await self._close(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        """Flush and stop ``producer``, bounded by ``produce_timeout_seconds`` per step.

        Every request waited at most that long for its records, so after the server has
        finished in-flight requests anything still unconfirmed was already answered 503:
        waiting longer keeps no promise and only delays exit.
        """
        timeout = self._settings.produce_timeout_seconds
        try:
            await asyncio.wait_for(producer.flush(), timeout)
        except (asyncio.TimeoutError, KafkaError) as error:
            log.warning("records not confirmed at shutdown are dropped (their requests got 503): %s",
                        describe_error(error))
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except asyncio.TimeoutError:
            # aiokafka's stop() waits for its buffer to drain, which never happens while
            # the broker is away; close its sender and connections directly instead.
            with contextlib.suppress(Exception):
                await producer._sender.close()
            with contextlib.suppress(Exception):
                await producer.client.close()

    def _replace_later(self, broken: AIOKafkaProducer) -> None:
        if self._producer is broken and (self._replacing is None or self._replacing.done()):
            self._replacing = asyncio.get_running_loop().create_task(self._replace(broken))

    async def _replace(self, broken: AIOKafkaProducer) -> None:
        replacement = self._build()
        try:
            await start_client(replacement, self._settings)
        except KafkaUnavailable as error:
            log.warning("could not replace the producer yet: %s", error)
            return  # the next failed request tries again
        if self._producer is not broken:  # stopped meanwhile
            await self._close(replacement)
            return
        self._producer = replacement
        log.warning("replaced the Kafka producer after it lost its idempotence state")
        await self._close(broken)

    async def publish(self, topic: str, records: Sequence[Record], keep_sends: bool = False) -> list[Any]:
        """Send ``(key, value, headers)`` records and wait until Kafka confirmed all of them; their
        ``RecordMetadata`` (partition, offset: the PRODUCER spans name them, ingest/tracing.py).

        With ``keep_sends``, records still unconfirmed at the deadline are left to the
        producer and the failure is a ``NotConfirmed`` holding their futures: the spool,
        which keeps the records, learns from them whether its copy must be sent at all."""
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("the producer is not running")
        started = time.perf_counter()
        futures: list[asyncio.Future[Any]] = []
        assert self._deadlines is not None  # made with the producer
        wait = self._deadlines.watch()
        try:
            if keep_sends:
                acknowledged = await self._send_watched(producer, topic, records, futures)
            else:
                acknowledged = await self._send_all(producer, topic, records)
        except asyncio.CancelledError:
            if not wait.timed_out():
                raise
            self._metrics.produce_errors.labels(topic, "timeout").inc()
            message = f"Kafka did not confirm within {self._settings.produce_timeout_seconds:g} s"
            raise (NotConfirmed(message, futures) if keep_sends else KafkaUnavailable(message)) from None
        except KafkaError as error:
            self._metrics.produce_errors.labels(topic, type(error).__name__).inc()
            if isinstance(error, (MessageSizeTooLargeError, RecordTooLargeError)):
                # The topic's max.message.bytes is below what this ingress was set up for.
                raise EventTooLarge(describe_error(error)) from None
            if isinstance(error, _BROKEN_PRODUCER_STATE):
                self._replace_later(producer)
            message = f"Kafka refused the records: {describe_error(error)}"
            raise (NotConfirmed(message, futures) if keep_sends else KafkaUnavailable(message)) from None
        finally:
            wait.finish()
        latency = self._produce_latency.get(topic)
        if latency is None:  # `.labels()` locks and builds a key on every call; this runs per request
            latency = self._produce_latency[topic] = self._metrics.produce_latency.labels(topic)
        latency.observe(time.perf_counter() - started)
        return acknowledged

    @staticmethod
    async def _send_all(
        producer: AIOKafkaProducer, topic: str, records: Sequence[Record]
    ) -> list[Any]:
        # Hand every record to the producer first so that they share batches, then wait
        # for all the confirmations together.
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, value, headers in records]
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    @staticmethod
    async def _send_watched(producer: AIOKafkaProducer, topic: str, records: Sequence[Record],
                            futures: list[asyncio.Future[Any]]) -> list[Any]:
        # As _send_all, but the deadline must not cancel the producer's futures: whether
        # Kafka confirms them later decides whether the spool sends its copy.
        for key, value, headers in records:
            future = await producer.send(topic, value, key=key, headers=headers)
            future.add_done_callback(_retrieve)  # none is left "never retrieved" after a failure
            futures.append(future)
        return [await asyncio.shield(future) for future in futures]

    async def ready(self) -> bool:
        """True while the producer has a live connection to a broker (checked at most once a second)."""
        producer = self._producer
        if producer is None:
            return False
        now = time.monotonic()
        if now - self._ready_checked_at < 1.0:
            return self._ready
        self._ready_checked_at = now
        self._ready = await self._connected(producer)
        return self._ready

    @staticmethod
    async def _connected(producer: AIOKafkaProducer) -> bool:
        client = producer.client
        for broker in client.cluster.brokers():
            try:
                if await asyncio.wait_for(client.ready(broker.nodeId), 1.0):
                    return True
            except (asyncio.TimeoutError, KafkaError, OSError):
                continue
        return False
