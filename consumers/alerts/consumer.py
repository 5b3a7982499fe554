"""``passpost consume alerts``: the alerts engine on the consumer runtime.

Crash safety lives in the local store (``PASSPOST_ALERT_STATE_FILE``): after each batch
is delivered to every sink, the open alerts and the batch's next offsets are saved
together in one atomic file write, and the runtime resumes from those offsets
(an ``ExactlyOnceConsumer``). So after a SIGKILL:

- an event whose notification was not delivered is read again and notified (not lost);
- an event whose notification was delivered and saved is not read again (not re-sent);
- only a kill between a delivery and its save (microseconds to a few ms) re-sends the
  notifications of that one step, with the same fingerprint and counts.

The store is the truth for the partitions it knows. For one it does not know (first
start, or the file was lost) the consumer group's committed offset is used, which the
runtime also keeps current; failing that, the runtime starts at the beginning.

Grouping sees every partition, so run one replica of the alerts consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from passpost.consumers.runtime import Batch, CannotRun, ExactlyOnceConsumer, RetryLater, group_id, identity
from passpost.consumers.runtime.tracing import trace_id_of
from passpost.kafka import client_options, start_client
from passpost.settings import Settings
from passpost.topic_metadata import TopicIdentity

from .engine import Alerter, AlertMetrics
from .grouping import Grouper
from .rules import rules_setting, summary
from .sinks import DEFAULT_BACKOFF, AlertmanagerSink, DeliveryError, LogSink, Sink, WebhookSink
from .store import StateStore, StateStoreError

log = logging.getLogger("passpost.alerts")

# Repeats and resolutions fall due with time alone; checked this often.
TICK_SECONDS = 1.0


def build_sinks(settings: Settings, stopping: asyncio.Event | None = None) -> list[Sink]:
    backoff = dataclasses.replace(DEFAULT_BACKOFF, deadline=settings.alert_delivery_deadline_seconds)
    sinks: list[Sink] = []
    if settings.alertmanager_url:
        sinks.append(AlertmanagerSink(settings.alertmanager_url, backoff=backoff, stopping=stopping))
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, format=settings.alert_webhook_format,  # type: ignore[arg-type]
                                 backoff=backoff, stopping=stopping))
    if settings.alert_log or not sinks:  # alerts are never sent nowhere
        sinks.append(LogSink())
    return sinks


def _key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class AlertsConsumer(ExactlyOnceConsumer):
    name = "alerts"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # A bad rules file fails here, before any connection, as one line naming it.
        rules = rules_setting(settings.alert_rules_file)
        grouper = Grouper(rules, trace_url_template=settings.trace_url_template,
                          repeat_seconds=settings.alert_repeat_seconds,
                          resolve_after_seconds=settings.alert_resolve_after_seconds)
        self.state = StateStore(settings.alert_state_file)
        self.alerter = Alerter(grouper, build_sinks(settings, self.stopping), store=self.state)
        self._ticker: asyncio.Task[None] | None = None

    def first_read_since(self) -> float | None:
        # A first deployment would otherwise alert on every failure the topic retains (days).
        return self.settings.alert_first_start_lookback_seconds

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Put the alert metrics on the runtime's ``/metrics`` (the runtime calls it before ``start()``)."""
        self.alerter.metrics = AlertMetrics(registry)

    async def start(self) -> None:
        try:
            self.state.check_writable()
            self.alerter.restore()
        except StateStoreError as error:
            raise CannotRun(str(error)) from None
        log.info("alerts: sinks %s; rules: %s", ", ".join(sink.name for sink in self.alerter.sinks),
                 "; ".join(summary(self.alerter.grouper.rules.rules)))
        self._ticker = asyncio.create_task(self._tick_forever(), name="alerts-tick")

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.alerter.tick()
            except DeliveryError as error:
                # Nothing moved on; the same repeats and resolutions are due at the next tick.
                log.warning("alerts: %s", error)

    async def write(self, batch: Batch) -> None:
        try:
            items = batch.items
            await self.alerter.handle(batch.events, {_key(tp): offset for tp, offset in batch.next_offsets.items()},
                                      lambda index: trace_id_of(items[index]))
        except DeliveryError as error:  # a sink down or refusing: nothing was saved, the batch comes again
            raise RetryLater(str(error)) from error

    async def check_topic(self, topic: str, current: TopicIdentity) -> None:
        holds_offsets = any(key.rpartition(":")[0] == topic for key in self.alerter.offsets)
        identity.check(topic, self.alerter.topics.get(topic), current, holds_offsets=holds_offsets,
                       store=f"the alerts state file {self.state.path} (PASSPOST_ALERT_STATE_FILE)",
                       start_over="delete it to start over (its open alerts are forgotten)")
        # Saved with the next step, together with the offsets it vouches for.
        self.alerter.topics[topic] = current.key()

    async def load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        stored = {tp: self.alerter.offsets[_key(tp)] for tp in partitions if _key(tp) in self.alerter.offsets}
        unknown = [tp for tp in partitions if tp not in stored]
        if unknown:
            stored.update(await self._committed(unknown))
        return stored

    async def _committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        # A throw-away client of the same group reads what the runtime committed; it never
        # joins the group (no subscribe), so it does not trigger a rebalance.
        # Started inside the try: a reader that cannot connect is closed all the same, and
        # start_client reports the failure in one line, as every other client does.
        reader = AIOKafkaConsumer(**client_options(self.settings), group_id=group_id(self.settings, self.name),
                                  enable_auto_commit=False)
        try:
            await start_client(reader, self.settings)
            found = {}
            for tp in partitions:
                offset = await reader.committed(tp)
                if offset is not None:
                    found[tp] = offset
            return found
        finally:
            await reader.stop()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.alerter.aclose()
