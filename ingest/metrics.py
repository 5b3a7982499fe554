"""The ingress's Prometheus metrics, on a registry of its own.

A registry per app, not the process-wide default, so that tests can build several apps
in one process and read each one's counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.openmetrics import exposition as openmetrics

from passpost.kafka_health import REACHABILITY

# The *_created series double the exposition for no use a dashboard has.
disable_created_metrics()

# Request latencies of a healthy ingress sit in single milliseconds; the tail up to the
# produce deadline (5 s by default) is what the upper buckets are for.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# ORIGIN values the vendor documents (seed/passes-postback.md); PASSPOST_KNOWN_ORIGINS adds more.
DOCUMENTED_ORIGINS = frozenset({"GENERATE_PASS"})
OTHER_ORIGIN = "other"


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, known_origins: Iterable[str] = ()) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # The origin label is bounded: a client must not be able to create series at will.
        self._known_origins = DOCUMENTED_ORIGINS | frozenset(known_origins)
        self._event_counters: dict[tuple[str, str], Any] = {}
        r = self.registry
        self.requests = Counter(
            "passpost_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "passpost_http_request_duration_seconds", "Time from request start to response, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.produce_latency = Histogram(
            "passpost_kafka_produce_duration_seconds", "Time until Kafka confirmed a request's records, by topic.",
            ["topic"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.produce_errors = Counter(
            "passpost_kafka_produce_errors", "Requests whose records Kafka did not confirm, by topic and error.",
            ["topic", "error"], registry=r,
        )
        self.events = Counter(
            "passpost_events_produced", "Events confirmed by Kafka, by outcome and origin (undocumented origins as "
            "`other`).", ["outcome", "origin"], registry=r,
        )
        self.dead_letters = Counter(
            "passpost_dead_letters", "Request bodies written to the dead-letter topic, by reason.",
            ["reason"], registry=r,
        )
        self.refusals = Counter(
            "passpost_http_refusals", "Requests or connections refused before the app: limits, timeouts, bad HTTP.",
            ["reason"], registry=r,
        )
        self.refusal_episodes = Counter(
            "passpost_unavailable_episodes", "Runs of postbacks answered 503 because Kafka or the spool could not keep "
            "them (each ends at the next postback accepted).", registry=r,
        )
        # 1 while this process reaches the broker, 0 while it cannot; per worker, the lowest counts.
        self.broker_reachable = Gauge(
            "passpost_kafka_broker_reachable", "Whether this process reaches the Kafka broker (1) or not (0), by "
            "node id.", ["node"], registry=r, multiprocess_mode="livemin",
        )
        REACHABILITY.subscribe(self._broker_reachability)
        self.recoveries = Counter(
            "passpost_xml_recoveries", "Bodies accepted only after dropping a malformed root start tag.",
            registry=r,
        )

    def _broker_reachability(self, node_id: int, address: str, reachable: bool) -> None:
        self.broker_reachable.labels(str(node_id)).set(1 if reachable else 0)

    def count_event(self, outcome: str, origin: str) -> None:
        key = (outcome, origin if origin in self._known_origins else OTHER_ORIGIN)
        counter = self._event_counters.get(key)
        if counter is None:  # `.labels()` locks and builds a key on every call; this runs per event
            counter = self._event_counters[key] = self.events.labels(*key)
        counter.inc()


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The Prometheus text of ``registry``, or, under ``passpost serve --workers N``, of every
    worker's metrics added up (prometheus_client's multiprocess mode, see ingest/workers.py);
    and its content type.

    A scraper that accepts OpenMetrics (Prometheus does, and needs it for exemplars) gets it: the
    request latency's exemplars name a trace when tracing is on. Multiprocess mode keeps no exemplars."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        registry = merged
    if "application/openmetrics-text" in accept:
        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
