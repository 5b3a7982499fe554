"""The loop every consumer runs in, and the wiring of its steps.

A batch goes through three steps, each in its own module: ``decode.py`` (records to events
or columns; undecodable and refused records to the dead-letter topic), ``write.py`` (the
sink's ``write``, retried or isolated as its errors say) and ``commit.py`` (the offsets,
only once the sink has the batch). ``assignment.py`` decides where partitions start and
``rebalance.py`` what a rebalance does to the batch in flight. The runner fetches, hands
each batch on, decodes the next while the previous one is written, and owns the process's
lifecycle: the health port, signals, starting and closing the clients.

SIGTERM stops fetching, finishes the batch, commits and leaves the group. A consumer is never
silently idle: /readyz answers 503 with the reason while its topic does not exist yet, while
it has no partitions, and while its sink has refused batches for longer than
``PASSPOST_CONSUMER_STALL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from passpost import tracing
from passpost.backoff import Backoff
from passpost.consumers.runtime.assignment import Assignment, topic_lookup
from passpost.consumers.runtime.commit import Commit
from passpost.consumers.runtime.consumer import Consumer
from passpost.consumers.runtime.dead_letters import DeadLetters
from passpost.consumers.runtime.decode import Decode
from passpost.consumers.runtime.entry_points import UnknownConsumer, load_consumer, registered
from passpost.consumers.runtime.errors import CannotRun
from passpost.consumers.runtime.health import ConsumerMetrics, serve_health
from passpost.consumers.runtime.rebalance import Rebalance
from passpost.consumers.runtime.refusals import BatchAbandoned, Refusals
from passpost.consumers.runtime.source import Fetched, Source
from passpost.consumers.runtime.tracing import end_batch, start_batch, within
from passpost.consumers.runtime.write import Write
from passpost.kafka import client_options, start_client
from passpost.schemas.registry import RegistryConfig, RegistryMetrics, RegistryResolver
from passpost.settings import Settings

__all__ = ["Runner", "UnknownConsumer", "group_id", "load_consumer", "registered"]

log = logging.getLogger("passpost.consumer")

FIRST_RETRY_SECONDS = 0.1
# A partition's share of PASSPOST_CONSUMER_BATCH_MAX_BYTES in one fetch (a record batch larger than it still comes).
_PARTITION_SHARE = 8
_MIN_PARTITION_FETCH_BYTES = 64 * 1024
# How often a consumer started before its topic asks whether the topic exists now.
TOPIC_POLL_SECONDS = 1.0


def group_id(settings: Settings, name: str) -> str:
    return settings.consumer_group or f"passpost-{name}"


@dataclass(frozen=True)
class Steps:
    """The steps of one run, wired to its Kafka client."""

    source: Source
    assignment: Assignment
    decode: Decode
    write: Write
    commit: Commit
    rebalance: Rebalance


class Runner:
    def __init__(self, consumer: Consumer, settings: Settings, *, health_port: int | None = None) -> None:
        self.consumer = consumer
        self.settings = settings
        self.name = consumer.name
        self.topic = settings.events_topic
        self.metrics = ConsumerMetrics(self.name)
        self.health_port = settings.consumer_port if health_port is None else health_port
        # The consumer's own: its sinks see the stop too, and give up waiting to retry at once.
        self.stopping = consumer.stopping
        self.backoff = Backoff(initial=FIRST_RETRY_SECONDS, cap=settings.consumer_retry_max_seconds)
        self.refusals = Refusals(self.name, self.backoff, self.stopping)
        self._dead_letters = DeadLetters(settings, self.name, self.refusals, self.metrics)
        self.dlq_topic = self._dead_letters.topic
        # Held while a batch is decoded and handed on; a rebalance takes it, then settles the write.
        self._in_flight = asyncio.Lock()
        self._waiting: str | None = "starting"  # why it is not consuming yet, or None once subscribed
        self._started = time.monotonic()
        self._steps: Steps | None = None  # made in run(): aiokafka's client wants the running loop
        registry = RegistryConfig.from_settings(settings)
        # Confluent-framed events name their writer schema by registry id: fetched once per id, cached.
        self._resolver = None if registry is None else RegistryResolver(
            registry, self.topic, RegistryMetrics(self.metrics.registry))

    @property
    def written(self) -> dict[TopicPartition, int]:
        """The next offset to read per partition as far as the sink is concerned (committed or assigned)."""
        return {} if self._steps is None else self._steps.commit.positions

    @property
    def url(self) -> str:
        """Where the runtime's HTTP port answers (on this machine, when it listens on every address)."""
        host = self.settings.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"http://[{host}]:{self.health_port}" if ":" in host else f"http://{host}:{self.health_port}"

    def stop(self) -> None:
        self.stopping.set()

    def not_ready(self) -> str | None:
        """Why /readyz answers 503, or None when it answers 200."""
        if self.stopping.is_set():
            return "stopping"
        if self._waiting is not None:
            return self._waiting
        if self._steps is None or not self._steps.assignment.applied:
            return f"no partition of topic {self.topic} is ready (none assigned, or its start offsets not read yet)"
        if self.refusals.since is not None:
            refused_for = time.monotonic() - self.refusals.since
            if refused_for > self.settings.consumer_stall_seconds:
                return (f"its sink has refused batches for {refused_for:.0f} s "
                        f"(PASSPOST_CONSUMER_STALL_SECONDS is {self.settings.consumer_stall_seconds:g})")
        return None

    def _seconds_since_commit(self) -> float:
        return time.monotonic() - (self._started if self._steps is None else self._steps.commit.last_commit)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Consume until SIGTERM/SIGINT, ``stop()``, or ``until()`` turns true after a batch."""
        if tracing.tracer is None:  # from OTEL_* alone; off (None) unless an exporter endpoint is set
            tracing.configure(f"passpost-{self.name}")
        # First: a taken port ends it before any client exists that would need closing.
        server = await self._serve_health()
        self.health_port = server.sockets[0].getsockname()[1]  # the real one when asked for port 0
        loop = asyncio.get_running_loop()
        handled: list[int] = []
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: tests call stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
                handled.append(signum)
        kafka: AIOKafkaConsumer | None = None
        started = False
        try:
            kafka = self._kafka_client()  # may refuse the settings (an unreadable PEM): the port closes below
            steps = self._steps = self._wire(kafka)
            self.consumer.register_metrics(self.metrics.registry)
            self.consumer.serving_at(self.url)
            if self._resolver is not None:  # unreachable or refusing: RegistryUnavailable, one line, exit 1
                await self._resolver.start()
            await self.consumer.start()
            started = True
            await self._dead_letters.start()
            if not await steps.assignment.wait_for_topic(self._wait_because, TOPIC_POLL_SECONDS):
                return
            await start_client(kafka, self.settings)
            kafka.subscribe([self.topic], listener=steps.rebalance)
            self._waiting = None
            log.info("consumer %s started: group %s, topic %s", self.name, group_id(self.settings, self.name),
                     self.topic)
            await self._loop(steps, until)
            fatal = steps.write.fatal or steps.assignment.fatal
            if fatal is not None:
                raise fatal
        finally:
            self._waiting = "stopping"
            for handled_signal in handled:
                loop.remove_signal_handler(handled_signal)
            if kafka is not None:  # leaving the group lets the others take the partitions at once
                with contextlib.suppress(Exception):
                    await kafka.stop()
            await self._dead_letters.stop()
            await self.consumer.close()
            if self._resolver is not None:
                await self._resolver.close()
            server.close()
            if started:  # a consumer that could not start says why once, not that it stopped
                log.info("consumer %s stopped", self.name)

    def _wait_because(self, reason: str) -> None:
        self._waiting = reason

    def _kafka_client(self) -> AIOKafkaConsumer:
        fetch_bytes = self.settings.consumer_batch_max_bytes
        return AIOKafkaConsumer(
            **client_options(self.settings), group_id=group_id(self.settings, self.name), enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=fetch_bytes,
            # aiokafka fetches again for each partition whose records are handed out while others still hold
            # theirs: with the whole budget per partition, each partition could hold it. A share each keeps
            # what is held near the budget.
            max_partition_fetch_bytes=max(fetch_bytes // _PARTITION_SHARE, _MIN_PARTITION_FETCH_BYTES),
            max_poll_records=self.settings.consumer_batch_size,
        )

    def _wire(self, source: Source) -> Steps:
        commit = Commit(self.name, source, self.metrics)
        assignment = Assignment(self.consumer, self.topic, source, topic_lookup(self.settings, self.topic),
                                self.backoff, self.stopping)
        write = Write(self.consumer, commit, self.refusals, self._dead_letters.keep, self.metrics)
        return Steps(source, assignment, Decode(self.consumer, self._dead_letters.keep, self._resolver), write,
                     commit, Rebalance(self._in_flight, assignment, write, commit, self.refusals))

    async def _serve_health(self) -> asyncio.Server:
        self.metrics.track(self._seconds_since_commit, self.not_ready)
        try:
            return await serve_health(self.settings.host, self.health_port, self.metrics, self.not_ready,
                                      self.consumer.routes())
        except OSError as error:
            where = f"{self.settings.host}:{self.health_port}"
            if error.errno == errno.EADDRINUSE:
                raise CannotRun(f"PASSPOST_CONSUMER_PORT: port {self.health_port} is already in use "
                                f"({where}, for /readyz and /metrics)") from None
            raise CannotRun(f"PASSPOST_CONSUMER_PORT: cannot listen on {where} "
                            f"(PASSPOST_HOST is the address): {error.strerror or error}") from None

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self, steps: Steps, until: Callable[[], bool] | None) -> None:
        try:
            while not self.stopping.is_set():
                fetched = await steps.source.getmany(timeout_ms=500, max_records=self.settings.consumer_batch_size)
                # getmany hands out only records at the current positions; taken right after it returns, the
                # generation tells whether a rebalance happened while the lock was awaited.
                generation = steps.assignment.generation
                async with self._in_flight:
                    assigned = steps.source.assignment()
                    usable = steps.assignment.usable(fetched, generation)
                    if usable:
                        await self._hand_on(steps, usable)
                    else:
                        await steps.write.join()
                    steps.commit.update_lag(assigned)
                if until is not None and until():
                    return
        finally:
            await steps.write.join()

    async def _hand_on(self, steps: Steps, fetched: Fetched) -> None:
        """Decode this batch while the previous one is written, then hand it on once that one is committed."""
        started = time.perf_counter()
        span = start_batch(self.name, self.topic, fetched)  # None unless tracing is on
        try:
            with within(span):
                batch, records = await steps.decode(fetched)
        except BatchAbandoned:
            end_batch(span)
            await steps.write.join()  # the previous batch still commits
            return
        # An abandoned batch is read again: the ones fetched after it must not be written before it.
        if await steps.write.join():
            steps.write.submit(batch, records, started, span)
        else:
            end_batch(span)
