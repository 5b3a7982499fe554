"""The loop every consumer runs in: fetch, decode, dead-letter, write, commit.

Offsets move only after the sink has the batch (``Consumer.write`` returned), or, for
sinks that store offsets, inside the sink's own transaction. ``RetryLater`` from the sink
retries the same batch with capped exponential backoff (``backoff.py``) and commits nothing;
``PoisonBatch`` isolates the events the sink refuses and dead-letters them
(``dead_letters.py``); any other error stops the consumer, uncommitted (``errors.py``). A rebalance waits for
the in-flight batch to finish (or drops it, if the sink is failing: the records are then
redelivered to whoever gets the partition). SIGTERM stops fetching, finishes the batch,
commits and leaves the group.

A consumer is never silently idle: /readyz answers 503 with the reason while its topic
does not exist yet, while it has no partitions, and while its sink has refused batches for
longer than ``PASSPOST_CONSUMER_STALL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from passpost.consumers.runtime.backoff import Backoff, Retry
from passpost.consumers.runtime.consumer import Batch, Columns, Consumer, Item
from passpost.consumers.runtime.dead_letters import DeadLetters
from passpost.consumers.runtime.errors import CannotRun, PoisonBatch, RetryLater
from passpost.consumers.runtime.health import ConsumerMetrics, serve_health
from passpost.errors import ConfigurationError
from passpost.kafka import KafkaUnavailable, client_options, describe, start_client
from passpost.schemas.codec import DecodeError, decode, decode_columns
from passpost.schemas.registry import RegistryConfig, RegistryMetrics, RegistryResolver
from passpost.settings import Settings
from passpost.topic_metadata import TopicIdsUnsupported, TopicMetadata

log = logging.getLogger("passpost.consumer")

ENTRY_POINT_GROUP = "passpost.consumers"
FIRST_RETRY_SECONDS = 0.1
# What a sink's write may raise to have the batch retried (anything else but PoisonBatch is a bug).
RETRIED = (RetryLater, OSError)
# A partition's share of PASSPOST_CONSUMER_BATCH_MAX_BYTES in one fetch (a record batch larger than it still comes).
_PARTITION_SHARE = 8
_MIN_PARTITION_FETCH_BYTES = 64 * 1024
# How often a consumer started before its topic asks whether the topic exists now.
TOPIC_POLL_SECONDS = 1.0


class UnknownConsumer(ConfigurationError, LookupError):
    """No consumer of that name is registered. ``str()`` is one line listing those that are."""


def registered() -> dict[str, type[Consumer]]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}  # type: ignore[misc]


def load_consumer(name: str) -> type[Consumer]:
    entries = registered()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise UnknownConsumer(f"no consumer named {name!r} (registered: {known})")
    consumer: type[Consumer] = entries[name].load()  # type: ignore[attr-defined]
    if consumer.name != name:  # the name is the class's; the entry point only finds it
        raise UnknownConsumer(f"the entry point {name!r} names {consumer.__module__}.{consumer.__qualname__}, whose "
                              f"name is {consumer.name!r}: register it as {consumer.name!r}")
    return consumer


def group_id(settings: Settings, name: str) -> str:
    return settings.consumer_group or f"passpost-{name}"


class _Stopped(Exception):
    """The batch was abandoned (stop or revocation while the sink kept failing)."""


class Runner:
    def __init__(self, consumer: Consumer, settings: Settings, *, health_port: int | None = None) -> None:
        self.consumer = consumer
        self.settings = settings
        self.name = consumer.name
        self.topic = settings.events_topic
        self._dead_letters = DeadLetters(settings, self.name)
        self.dlq_topic = self._dead_letters.topic
        self.metrics = ConsumerMetrics(self.name)
        self.health_port = settings.consumer_port if health_port is None else health_port
        # The consumer's own: its sinks see the stop too, and give up waiting to retry at once.
        self.stopping = consumer.stopping
        self.backoff = Backoff(initial=FIRST_RETRY_SECONDS, cap=settings.consumer_retry_max_seconds)
        # Held while a batch is decoded and handed on; a revocation takes it, then settles the write.
        self._in_flight = asyncio.Lock()
        self._revoking = False
        self._generation = 0  # counts rebalances, so a fetch that straddled one is not used
        self._pending: asyncio.Task[None] | None = None  # the batch being written
        self._waiting: str | None = "starting"  # why it is not consuming yet, or None once subscribed
        # Partitions whose start positions are applied: only their records reach the sink.
        self._applied: set[TopicPartition] = set()
        self._refused_since: float | None = None  # first refusal of a batch not yet committed
        self._last_commit = time.monotonic()  # or the start, or the assignment, before the first commit
        self._committed_once = False
        self._fatal: BaseException | None = None  # found in a rebalance callback or a write, raised by run()
        self.written: dict[TopicPartition, int] = {}  # next offset per partition, for lag
        self._kafka: AIOKafkaConsumer | None = None
        registry = RegistryConfig.from_settings(settings)
        # Confluent-framed events name their writer schema by registry id: fetched once per id, cached.
        self._resolver = None if registry is None else RegistryResolver(
            registry, self.topic, RegistryMetrics(self.metrics.registry))

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Consume until SIGTERM/SIGINT, ``stop()``, or ``until()`` turns true after a batch."""
        # First: a taken port ends it before any client exists that would need closing.
        server = await self._serve_health()
        self.health_port = server.sockets[0].getsockname()[1]  # the real one when asked for port 0
        options = client_options(self.settings)
        fetch_bytes = self.settings.consumer_batch_max_bytes
        self._kafka = AIOKafkaConsumer(
            **options, group_id=group_id(self.settings, self.name), enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=fetch_bytes,
            # aiokafka fetches again for each partition whose records are handed out while others still hold
            # theirs: with the whole budget per partition, six partitions held up to six times it. An eighth each
            # keeps what is held near the budget (bench.consume, 1,000,000 events: peak RSS 194 -> 177 MiB).
            max_partition_fetch_bytes=max(fetch_bytes // _PARTITION_SHARE, _MIN_PARTITION_FETCH_BYTES),
            max_poll_records=self.settings.consumer_batch_size,
        )
        loop = asyncio.get_running_loop()
        handled: list[int] = []
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: tests call stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
                handled.append(signum)
        started = False
        try:
            self.consumer.register_metrics(self.metrics.registry)
            self.consumer.serving_at(self.url)
            if self._resolver is not None:  # unreachable or refusing: RegistryUnavailable, one line, exit 1
                await self._resolver.start()
            await self.consumer.start()
            started = True
            await self._dead_letters.start()
            if not await self._wait_for_topic():
                return
            await start_client(self._kafka, self.settings)
            self._kafka.subscribe([self.topic], listener=_Listener(self))
            self._waiting = None
            log.info("consumer %s started: group %s, topic %s", self.name, group_id(self.settings, self.name),
                     self.topic)
            await self._loop(until)
            if self._fatal is not None:
                raise self._fatal
        finally:
            self._waiting = "stopping"
            for handled_signal in handled:
                loop.remove_signal_handler(handled_signal)
            # Leaving the group lets the others take the partitions at once, not after a timeout.
            with contextlib.suppress(Exception):
                await self._kafka.stop()
            await self._dead_letters.stop()
            await self.consumer.close()
            if self._resolver is not None:
                await self._resolver.close()
            server.close()
            if started:  # a consumer that could not start says why once, not that it stopped
                log.info("consumer %s stopped", self.name)

    async def _serve_health(self) -> asyncio.Server:
        self.metrics.track(lambda: time.monotonic() - self._last_commit, self.not_ready)
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

    @property
    def url(self) -> str:
        """Where the runtime's HTTP port answers (on this machine, when it listens on every address)."""
        host = self.settings.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"http://[{host}]:{self.health_port}" if ":" in host else f"http://{host}:{self.health_port}"

    def not_ready(self) -> str | None:
        """Why /readyz answers 503, or None when it answers 200."""
        if self.stopping.is_set():
            return "stopping"
        if self._waiting is not None:
            return self._waiting
        if not self._applied:
            return f"no partition of topic {self.topic} is ready (none assigned, or its start offsets not read yet)"
        if self._refused_since is not None:
            refused_for = time.monotonic() - self._refused_since
            if refused_for > self.settings.consumer_stall_seconds:
                return (f"its sink has refused batches for {refused_for:.0f} s "
                        f"(PASSPOST_CONSUMER_STALL_SECONDS is {self.settings.consumer_stall_seconds:g})")
        return None

    async def _wait_for_topic(self) -> bool:
        """Wait until the topic exists, then hand the sink its identity; False if stopped meanwhile.

        Subscribed to a topic that does not exist yet, aiokafka would only see it at its next
        metadata refresh (every 5 minutes): asking every second and subscribing once it is
        there gets the partitions assigned within seconds of the topic's creation.
        """
        waiting = f"topic {self.topic} does not exist yet"
        async with TopicMetadata(self.settings) as metadata:
            while not self.stopping.is_set():
                try:
                    identity = (await metadata.describe([self.topic])).identity(self.topic)
                except TopicIdsUnsupported:
                    raise
                except KafkaUnavailable as error:  # a broker restarting: ask again
                    log.warning("consumer %s: %s", self.name, error)
                    identity = None
                if identity is not None:
                    break
                if self._waiting != waiting:
                    self._waiting = waiting
                    log.warning("consumer %s: waiting for topic %s to be created", self.name, self.topic)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), TOPIC_POLL_SECONDS)
            else:
                return False
        if self.consumer.stores_offsets:
            # Before any stored offset is used: those of another incarnation of the topic stop it here.
            await self.consumer.check_topic(self.topic, identity)
        return True

    async def _check_identity(self) -> None:
        """Again at each assignment: the topic may have been deleted and re-created meanwhile."""
        async with TopicMetadata(self.settings) as metadata:
            identity = (await metadata.describe([self.topic])).identity(self.topic)
        if identity is None:
            raise KafkaUnavailable(f"topic {self.topic} is not in the cluster's metadata")
        await self.consumer.check_topic(self.topic, identity)

    def stop(self) -> None:
        self.stopping.set()

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self, until: Callable[[], bool] | None) -> None:
        assert self._kafka is not None
        try:
            while not self.stopping.is_set():
                records = await self._kafka.getmany(timeout_ms=500, max_records=self.settings.consumer_batch_size)
                # getmany hands out only records at the current positions; taken right after it
                # returns, this tells whether a rebalance happened while the lock was awaited.
                generation = self._generation
                async with self._in_flight:
                    assigned = self._kafka.assignment()
                    # After such a rebalance positions were reset (to the committed or the sink's
                    # offsets): these records may lie beyond a dropped batch, and are fetched again.
                    # Records of a partition whose start position is not applied yet were fetched
                    # from wherever aiokafka started it; on_assigned seeks back and they come again.
                    fetched = {} if generation != self._generation else {
                        tp: batch for tp, batch in records.items() if tp in self._applied and batch}
                    if fetched:
                        await self._pipeline(fetched)
                    else:
                        await self._settle()
                    self._update_lag(assigned)
                if until is not None and until():
                    return
        finally:
            await self._settle()

    async def _pipeline(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Decode this batch while the previous one is written (sinks write in a thread or on
        the network), then hand it on only once the previous one is written and committed."""
        started = time.perf_counter()
        try:
            batch, records = await self._prepare(fetched)
        except _Stopped:
            batch, records = None, _Records({})
        previous_written = await self._settle()
        # A dropped batch is not skipped: the one after it must not be written either.
        if previous_written and batch is not None:
            self._pending = asyncio.create_task(self._finish(batch, records, started))

    async def _settle(self) -> bool:
        """Wait for the batch being written; False when it was dropped uncommitted."""
        task, self._pending = self._pending, None
        if task is None:
            return True
        try:
            await task
        except _Stopped:
            return False
        except Exception as error:  # noqa: BLE001 (a sink's bug: stop, uncommitted; run() raises it)
            log.error("consumer %s: the sink raised %s (neither RetryLater nor PoisonBatch): stopping without "
                      "committing the batch", self.name, describe(error))
            self._fatal = self._fatal or error
            self.stop()
            return False
        return True

    async def _prepare(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> tuple[Batch, _Records]:
        """The batch, and its records by (partition, offset), should the sink find it poison."""
        if self._resolver is not None and not await self._resolver.learn(
                (record.value for records in fetched.values() for record in records), self.stopping):
            raise _Stopped  # stopped while the registry did not answer: nothing of this batch is used
        next_offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
        if self.consumer.columnar:
            return Batch(columns=await self._columns(fetched), next_offsets=next_offsets), _Records(fetched)
        items: list[Item] = []
        # Called for every event: skipped when the consumer keeps the base class's (which refuses none).
        validate = None if type(self.consumer).validate is Consumer.validate else self.consumer.validate
        resolver, append = self._resolver, items.append
        for records in fetched.values():
            for record in records:
                try:
                    event = decode(record.value, resolver=resolver)
                except DecodeError as error:
                    await self._dead_letter(record, "undecodable", str(error))
                    continue
                reason = None if validate is None else validate(event)
                if reason is not None:
                    await self._dead_letter(record, "rejected", reason)
                    continue
                append(Item(event, record.topic, record.partition, record.offset))
        return Batch(items, next_offsets), _Records(fetched)

    async def _columns(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> Columns:
        """The batch decoded field by field (``Consumer.columnar``): no event object per record."""
        records = [record for batch in fetched.values() for record in batch]
        decoded = decode_columns([record.value for record in records], resolver=self._resolver)
        for index, error in decoded.errors:
            await self._dead_letter(records[index], "undecodable", str(error))
        if decoded.decoded is not None:
            records = [records[index] for index in decoded.decoded]
        columns = Columns(decoded.fields, [record.topic for record in records],
                          [record.partition for record in records], [record.offset for record in records])
        if type(self.consumer).validate is Consumer.validate:
            return columns
        kept = []
        for row, item in enumerate(columns.items()):
            reason = self.consumer.validate(item.event)
            if reason is not None:
                await self._dead_letter(records[row], "rejected", reason)
            else:
                kept.append(row)
        return columns if len(kept) == len(columns) else columns.select(kept)

    async def _finish(self, batch: Batch, records: _Records, started: float) -> None:
        await self._write_isolating(batch, records)
        await self._commit(batch.next_offsets)
        self._refused_since = None
        self._last_commit = time.monotonic()
        self._committed_once = True
        self.written.update(batch.next_offsets)
        self._update_lag(batch.next_offsets)
        self.metrics.events.inc(len(batch))
        self.metrics.batches.inc()
        self.metrics.batch_duration.observe(time.perf_counter() - started)

    async def _write_isolating(self, batch: Batch, records: _Records) -> None:
        """Write ``batch``; if the sink calls it poison, its events one by one, and dead-letter those still refused."""
        try:
            await self._write(batch)
            return
        except PoisonBatch as poison:
            if not batch.items:
                raise  # nothing left to isolate: a sink that refuses bare offsets has a bug
            if len(batch) == 1:
                item = batch.items[0]
                await self._dead_letter(records.at(item.partition, item.offset), "poison", str(poison))
            else:
                log.warning("consumer %s: the sink refused a batch of %d as poison (%s); writing its events one "
                            "by one", self.name, len(batch), describe(poison))
                for item in batch.items:
                    single = Batch([item], {TopicPartition(item.topic, item.partition): item.offset + 1})
                    await self._write_isolating(single, records)
        # The sink's offsets (and the commit) move past the dead letters too.
        await self._write(Batch([], batch.next_offsets))

    async def _write(self, batch: Batch) -> None:
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                await self.consumer.write(batch)
                return
            except RETRIED as error:
                self._refused()
                delay = None if self._revoking else retry.next_delay()
                if delay is None:
                    log.warning("consumer %s: dropping a batch of %d the sink refused (%s); it is not committed "
                                "and will be read again", self.name, len(batch), describe(error))
                    raise _Stopped from None
                self.metrics.retries.inc()
                log.warning("consumer %s: sink refused a batch of %d (%s); retrying in %.1f s", self.name,
                            len(batch), describe(error), delay)
                await retry.wait(delay)

    def _refused(self) -> None:
        if self._refused_since is None:
            self._refused_since = time.monotonic()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._kafka is not None
        try:
            await self._kafka.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # The sink has the batch; for sinks that store offsets nothing is lost at all, for
            # the others the records come again and the sink's idempotence absorbs them.
            log.warning("consumer %s: commit failed (%s); the batch may be delivered again", self.name,
                        describe(error))

    async def _dead_letter(self, record: ConsumerRecord, error: str, detail: str) -> None:
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                # Awaited to the broker's acknowledgement: the offset may move only after.
                await self._dead_letters.send(record, error, detail)
                break
            except KafkaError as failure:
                self._refused()
                delay = None if self._revoking else retry.next_delay()
                if delay is None:
                    raise _Stopped from None
                log.warning("consumer %s: dead letter not kept (%s); retrying in %.1f s", self.name,
                            describe(failure), delay)
                await retry.wait(delay)
        self.metrics.dead_letter(error)
        log.warning("consumer %s: %s/%d@%d to %s: %s", self.name, record.topic, record.partition, record.offset,
                    self.dlq_topic, error)

    def _update_lag(self, partitions: Iterable[TopicPartition]) -> None:
        assert self._kafka is not None
        for tp in partitions:
            highwater = self._kafka.highwater(tp)
            if highwater is not None and tp in self.written:
                self.metrics.lag.labels(self.name, tp.topic, str(tp.partition)).set(
                    max(0, highwater - self.written[tp]))

    # -- rebalance -------------------------------------------------------------------------

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self._revoking = True
        try:
            async with self._in_flight:
                # The batch being written commits (or is dropped, uncommitted) first.
                await self._settle()
                self._generation += 1
                for tp in revoked:
                    self._applied.discard(tp)
                    self.written.pop(tp, None)
                    with contextlib.suppress(KeyError):
                        self.metrics.lag.remove(self.name, tp.topic, str(tp.partition))
        finally:
            self._revoking = False

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # aiokafka fetches newly assigned partitions from their committed offsets while this
        # runs; holding the lock (and counting the generation only once every position is set)
        # keeps any such record from the sink until the loop fetches it again from here.
        async with self._in_flight:
            starts = await self._start_offsets_retried(sorted(assigned)) if assigned else {}
            if assigned and not starts:  # stopped before they could be read: nothing may reach the sink
                return
            assert self._kafka is not None
            for tp, offset in starts.items():
                self._kafka.seek(tp, offset)
            self.written.update(starts)
            self._applied = set(assigned)
            self._generation += 1
            self._refused_since = None  # a batch dropped at the revocation is read again from here
            if not self._committed_once:
                self._last_commit = time.monotonic()
        if assigned:
            log.info("consumer %s: resuming %s", self.name,
                     ", ".join(f"{tp.partition}@{offset}" for tp, offset in sorted(starts.items())))

    async def _start_offsets_retried(self, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
        # aiokafka only logs a listener's exception: given up, the partitions would stay unread.
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                return await self._start_offsets(assigned)
            except CannotRun as error:  # no use retrying: run() raises it
                self._fatal = error
                self.stop()
                return {}
            except Exception as error:  # noqa: BLE001 (the sink's store or Kafka, retried like a batch)
                delay = retry.next_delay()
                if delay is None:
                    return {}
                log.warning("consumer %s: cannot read where its partitions start (%s); retrying in %.1f s",
                            self.name, describe(error), delay)
                if not await retry.wait(delay):
                    return {}

    async def _start_offsets(self, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where each partition starts: the sink's stored offset (sinks that store them), else the
        group's committed offset (the others), else the partition's beginning."""
        assert self._kafka is not None
        if self.consumer.stores_offsets:
            # The sink is the truth: a partition it has never seen starts at the beginning
            # (also after `passpost rebuild`, whatever the group committed).
            await self._check_identity()
            known = await self.consumer.load_offsets(assigned)
        else:
            known = {}
            for tp in assigned:
                committed = await self._kafka.committed(tp)
                if committed is not None:
                    known[tp] = committed
        fresh = [tp for tp in assigned if tp not in known]
        return {**await self._first_offsets(fresh), **known}

    async def _first_offsets(self, fresh: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where partitions never read before start (``Consumer.first_read_since``)."""
        assert self._kafka is not None
        if not fresh:
            return {}
        since = self.consumer.first_read_since()
        if since is None:
            return dict(await self._kafka.beginning_offsets(fresh))
        moment_ms = int((time.time() - since) * 1000)
        found = await self._kafka.offsets_for_times({tp: moment_ms for tp in fresh})
        ends = await self._kafka.end_offsets(fresh)
        log.info("consumer %s: first read of %s from %g s back", self.name,
                 ", ".join(str(tp.partition) for tp in fresh), since)
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in fresh}


class _Records:
    """A batch's records by (partition, offset), indexed only when a poison batch asks (rarely): indexing
    every record of every batch cost the event loop a dict entry per event."""

    __slots__ = ("_by_position", "_fetched")

    def __init__(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self._fetched = fetched
        self._by_position: dict[tuple[int, int], ConsumerRecord] | None = None

    def at(self, partition: int, offset: int) -> ConsumerRecord:
        if self._by_position is None:
            self._by_position = {(record.partition, record.offset): record
                                 for records in self._fetched.values() for record in records}
        return self._by_position[(partition, offset)]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.runner.on_assigned(assigned)
