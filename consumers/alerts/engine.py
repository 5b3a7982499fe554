"""Rules, grouping and sinks put together: events in, delivered notifications out.

Each step is a transaction. The grouper is copied, the events and the clock are applied
to the copy, its notifications are delivered to every sink, and only then does the copy
become the state (and get saved, with the Kafka offsets it covers, when a store is
given). If any sink fails, the copy is thrown away and ``DeliveryError`` propagates: the
runtime offers the same batch again, and the same notifications come out again, so none
is lost and counts are not doubled. Sinks that had already taken them see them twice;
Alertmanager merges them (same labels, same startsAt), webhook receivers get the same
fingerprint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Histogram

from passpost.schemas.event import PassPostback

from .grouping import Grouper, Notification
from .sinks import DeliveryError, Sink
from .store import StateStore

__all__ = ["AlertMetrics", "Alerter"]

log = logging.getLogger("passpost.alerts")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.fired = Counter("passpost_alerts_fired", "Firing notifications (first and updated), by severity.",
                             ["severity"], registry=self.registry)
        self.resolved = Counter("passpost_alerts_resolved", "Resolved notifications, by severity.", ["severity"],
                                registry=self.registry)
        self.delivered = Counter("passpost_alerts_delivered", "Notifications a sink took.", ["sink"],
                                 registry=self.registry)
        self.failed = Counter("passpost_alerts_failed", "Deliveries a sink still refused after its retries.",
                              ["sink"], registry=self.registry)
        self.latency = Histogram(
            "passpost_alert_delivery_seconds",
            "From the received_at of the oldest event a notification reports first, to its delivery.", ["sink"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=self.registry)


class Alerter:
    def __init__(self, grouper: Grouper, sinks: Sequence[Sink], *, metrics: AlertMetrics | None = None,
                 store: StateStore | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.grouper = grouper
        self.sinks = tuple(sinks)
        self.metrics = metrics or AlertMetrics()
        self.store = store
        self.clock = clock
        # Kafka position the state covers, "topic:partition" -> next offset, saved with it.
        self.offsets: dict[str, int] = {}
        # topic -> the TopicIdentity key those offsets were read from, saved with them.
        self.topics: dict[str, str] = {}
        # write() and the once-a-second tick() must not interleave their transactions.
        self._lock = asyncio.Lock()

    def restore(self) -> None:
        """Load the saved state, if any: after a restart, nothing notified is notified again."""
        if self.store is None:
            return
        saved = self.store.load()
        if saved is not None:
            self.grouper.load_state(saved["grouper"])
            self.offsets = dict(saved["offsets"])
            self.topics = dict(saved.get("topics", {}))

    async def handle(self, events: Sequence[PassPostback], offsets: Mapping[str, int] | None = None,
                     trace_ids: Callable[[int], str | None] | None = None) -> int:
        """Apply a batch of events; returns how many notifications went out. ``trace_ids(i)``: the trace the
        i-th event was made in, asked only for an alert's first event."""
        return await self._step(events, offsets or {}, trace_ids)

    async def tick(self) -> int:
        """Repeats and resolutions that fall due with time alone."""
        return await self._step((), {})

    async def _step(self, events: Sequence[PassPostback], offsets: Mapping[str, int],
                    trace_ids: Callable[[int], str | None] | None = None) -> int:
        async with self._lock:
            trial = self.grouper.copy()
            now = self.clock()
            for index, event in enumerate(events):
                trial.observe(event, now, None if trace_ids is None else functools.partial(trace_ids, index))
            notifications = trial.due(now)
            if not notifications and not offsets:
                # Nothing to send and no position to record: the trial differs only by
                # counts that will go out with a later notification, so keep them.
                self.grouper = trial
                return 0
            await self._deliver(notifications)
            self.grouper = trial
            self.offsets.update(offsets)
            if self.store is not None:
                self.store.save({"grouper": trial.to_state(), "offsets": self.offsets, "topics": self.topics})
            return len(notifications)

    async def _deliver(self, notifications: list[Notification]) -> None:
        if not notifications:
            return
        results = await asyncio.gather(*(self._deliver_to(sink, notifications) for sink in self.sinks),
                                       return_exceptions=True)
        problems = [result for result in results if isinstance(result, BaseException)]
        if problems:
            for problem in problems:
                if not isinstance(problem, DeliveryError):
                    raise problem
            raise DeliveryError("; ".join(str(problem) for problem in problems))
        for notification in notifications:
            counter = self.metrics.resolved if notification.status == "resolved" else self.metrics.fired
            counter.labels(notification.labels.get("severity", "")).inc()

    async def _deliver_to(self, sink: Sink, notifications: list[Notification]) -> None:
        try:
            await sink.send(notifications)
        except DeliveryError:
            self.metrics.failed.labels(sink.name).inc(len(notifications))
            raise
        delivered_at = self.clock()
        self.metrics.delivered.labels(sink.name).inc(len(notifications))
        for notification in notifications:
            if notification.pending_since is not None:
                latency = (delivered_at - notification.pending_since).total_seconds()
                self.metrics.latency.labels(sink.name).observe(max(latency, 0.0))

    async def aclose(self) -> None:
        for sink in self.sinks:
            await sink.aclose()

