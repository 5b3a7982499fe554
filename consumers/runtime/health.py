"""A consumer's HTTP face: /healthz, /readyz and Prometheus /metrics on one small port.

A plain asyncio server: the consumer is not a web app, and pulling Starlette and uvicorn
into its loop for three GETs would cost more than these lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from passpost.kafka_health import REACHABILITY


class ConsumerMetrics:
    """The metric names the Grafana dashboard (deploy/grafana/passpost.json) reads."""

    def __init__(self, consumer: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["consumer"]
        self.events = Counter("passpost_consumer_events", "Events written by the consumer's sink.", labels,
                              registry=self.registry).labels(consumer)
        self.batches = Counter("passpost_consumer_batches", "Batches written by the consumer's sink.", labels,
                               registry=self.registry).labels(consumer)
        self.batch_duration = Histogram(
            "passpost_consumer_batch_duration_seconds", "Time from fetch to commit of one batch.", labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry,
        ).labels(consumer)
        self.lag = Gauge("passpost_consumer_lag", "Records on the partition not yet written by the consumer.",
                         ["consumer", "topic", "partition"], registry=self.registry)
        self.retries = Counter("passpost_consumer_retries", "Batches retried after the sink refused them.", labels,
                               registry=self.registry).labels(consumer)
        self._dead_letters = Counter("passpost_consumer_dead_letters",
                                     "Records sent to the consumer's dead-letter topic.", ["consumer", "reason"],
                                     registry=self.registry)
        self._seconds_since_commit = Gauge(
            "passpost_consumer_seconds_since_commit",
            "Seconds since the consumer last committed a batch (since it started or was assigned, before its first).",
            labels, registry=self.registry)
        self._ready = Gauge("passpost_consumer_ready", "1 while /readyz answers 200, else 0.", labels,
                            registry=self.registry)
        self.consumer = consumer
        # The same name as the ingress's: 1 while this process reaches the broker, 0 while not.
        self._broker_reachable = Gauge(
            "passpost_kafka_broker_reachable", "Whether this process reaches the Kafka broker (1) or not (0), by "
            "node id.", ["consumer", "node"], registry=self.registry)
        REACHABILITY.subscribe(self._broker_reachability)

    def _broker_reachability(self, node_id: int, address: str, reachable: bool) -> None:
        self._broker_reachable.labels(self.consumer, str(node_id)).set(1 if reachable else 0)

    def track(self, seconds_since_commit: Callable[[], float], not_ready: Callable[[], str | None]) -> None:
        """Both gauges are computed when scraped: a stalled loop cannot leave them stale."""
        self._seconds_since_commit.labels(self.consumer).set_function(seconds_since_commit)
        self._ready.labels(self.consumer).set_function(lambda: 0.0 if not_ready() else 1.0)

    def dead_letter(self, reason: str) -> None:
        self._dead_letters.labels(self.consumer, reason).inc()


# A consumer's own GET endpoint: the query's parameters in, (content type, body) out.
Route = Callable[[Mapping[str, str]], Awaitable[tuple[str, bytes]]]


async def serve_health(
    host: str, port: int, metrics: ConsumerMetrics, not_ready: Callable[[], str | None],
    routes: Mapping[str, Route] | None = None,
) -> asyncio.Server:
    """``not_ready()`` is None when ready, else the reason /readyz gives with its 503. ``routes`` are the
    consumer's own paths (``Consumer.routes()``); one that raises answers 503 with the error's type."""
    routes = routes or {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readline(), 5)
            # Drain the headers; nothing in them matters here.
            while await asyncio.wait_for(reader.readline(), 5) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path, _, query = (parts[1] if len(parts) > 1 else "").partition("?")
            if path in routes:
                try:
                    ctype, body = await routes[path](dict(urllib.parse.parse_qsl(query)))
                    status = "200 OK"
                except Exception as error:  # noqa: BLE001 (answered, not raised: the server stays up)
                    status, ctype, body = "503 Service Unavailable", "text/plain", f"{type(error).__name__}\n".encode()
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                reason = not_ready()
                status = "503 Service Unavailable" if reason else "200 OK"
                ctype, body = "text/plain", f"not ready: {reason}\n".encode() if reason else b"ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
