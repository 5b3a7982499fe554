"""The ingress: a Starlette app that turns pass postbacks into Kafka events.

``POST /postbacks/passes`` answers (SPEC section 2):

* 200 once Kafka confirmed an event for every item of the request;
* 400 / 422 for a body that is not a postback, after writing it to the dead-letter topic;
* 401 without a valid token, 413 above the body limit: nothing is written;
* 413 ``event_too_large`` when its events would exceed what one request may make
  (``OutputBudget``) or what Kafka takes: a permanent refusal, body dead-lettered;
* 503 with ``Retry-After`` when Kafka did not confirm in time: nothing is acknowledged,
  so the sender retries.

Limits on the connection itself (request line, headers, timeouts, connection count) are
enforced before any of this, in ``passpost.ingest.connection``.

``GET /healthz`` (alive), ``GET /readyz`` (producer connected, not shutting down) and
``GET /metrics`` (Prometheus) serve the platform.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from passpost.ingest.auth import TokenCheck
from passpost.ingest.connection import TIMED_OUT, Refusal
from passpost.ingest.forwarder import SpoolingPublisher, publisher_for
from passpost.ingest.metrics import IngestMetrics, exposition
from passpost.ingest.middleware import RequestContext
from passpost.ingest.postback import OutputBudget, Rejected, extract_xml, parse_xml, postbacks_in
from passpost.ingest.publisher import EventTooLarge, Publisher, Record, bounded_records
from passpost.kafka import KafkaUnavailable, max_record_bytes
from passpost.settings import Settings

log = logging.getLogger("passpost.ingest")

POSTBACK_PATH = "/postbacks/passes"


class BodyTooLarge(Exception):
    pass


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class Ingress:
    """The endpoints, holding what they share: settings, credentials, producer, metrics."""

    def __init__(self, settings: Settings, publisher: Publisher | SpoolingPublisher, metrics: IngestMetrics) -> None:
        self.settings = settings
        self.publisher = publisher
        self.metrics = metrics
        self.tokens = TokenCheck(settings.ingest_tokens, open_access=settings.ingest_open)
        self.draining = False

    async def receive_postback(self, request: Request) -> Response:
        if not self.tokens.allows(request):
            return error(
                401, "unauthorized", "A valid token is required: ?token=, a Bearer token or a Basic password.",
                headers={"WWW-Authenticate": 'Bearer realm="passpost", Basic realm="passpost"'},
            )
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return error(413, "body_too_large", f"The body exceeds {self.settings.max_body_bytes} bytes.")
        except ClientDisconnect:
            timed_out: Refusal | None = request.scope.get(TIMED_OUT)
            if timed_out is not None:  # answered by the connection already; this is for the log
                return error(timed_out.status, timed_out.code, timed_out.detail)
            return error(400, "client_disconnected", "The client went away before sending the whole body.")
        received_at = datetime.now(timezone.utc)
        request_id: str = request.state.request_id
        content_type = request.headers.get("content-type", "")
        try:
            records, events = self._records_of(body, content_type, received_at, request_id)
        except Rejected as rejected:
            return await self._dead_letter(body, rejected, received_at, content_type, request_id)
        try:
            await self.publisher.publish(self.settings.events_topic, records)
        except KafkaUnavailable as unavailable:
            return self._unavailable(unavailable)
        except EventTooLarge as too_large:
            refusal = Rejected(413, "event_too_large", f"Kafka refused an event of this request as too large: "
                                                       f"{too_large}")
            return await self._dead_letter(body, refusal, received_at, content_type, request_id)
        for _, outcome, origin in events:
            self.metrics.count_event(outcome, origin)
        request.state.log_fields = {"events": len(events)}
        return JSONResponse({"events": len(events), "event_ids": [event_id for event_id, _, _ in events]})

    def _records_of(self, body: bytes, content_type: str, received_at: datetime,
                    request_id: str) -> tuple[list[Record], list[tuple[str, str, str]]]:
        """The request's records for Kafka and ``(event id, outcome, origin)`` of each event; raises
        ``Rejected``. The XML tree and the event objects end here, before the request waits
        on Kafka: a waiting request holds only its body and its encoded records."""
        budget = OutputBudget(len(body), self.settings.max_items)
        root, recovered = parse_xml(extract_xml(body, content_type))
        if recovered:
            self.metrics.recoveries.inc()
        events = [postback.to_event(received_at) for postback in postbacks_in(root, budget)]
        records = bounded_records(events, [("request_id", request_id.encode())], budget,
                                  max_record_bytes(self.settings), self.publisher.schema_id)
        return records, [(event.event_id, event.outcome.value, event.origin) for event in events]

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge  # refused before a byte of it is read
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _dead_letter(
        self, body: bytes, rejected: Rejected, received_at: datetime, content_type: str, request_id: str
    ) -> Response:
        headers = [
            ("error", rejected.code.encode()),
            ("detail", rejected.detail.encode()),
            ("received_at", received_at.isoformat().encode()),
            ("content_type", content_type.encode("latin-1", "replace")),
            ("request_id", request_id.encode()),
        ]
        try:
            await self.publisher.publish(self.settings.dead_letter_topic, [(None, body, headers)])
        except KafkaUnavailable as unavailable:
            # Not kept yet, so not refused yet either: the sender retries and nothing is lost.
            return self._unavailable(unavailable)
        self.metrics.dead_letters.labels(rejected.code).inc()
        return error(rejected.status, rejected.code, rejected.detail)

    def _unavailable(self, unavailable: KafkaUnavailable) -> Response:
        log.warning("answering 503: %s", unavailable)
        return error(
            503, "kafka_unavailable", "Kafka did not confirm the postback in time; retry later.",
            headers={"Retry-After": str(self.settings.retry_after_seconds)},
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.draining:
            return error(503, "shutting_down", "The ingress is shutting down.")
        if not await self.publisher.ready():
            return error(503, "kafka_not_connected", "The producer has no connection to Kafka.")
        return JSONResponse({"status": "ready"})

    async def metrics_text(self, request: Request) -> Response:
        return Response(exposition(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                 headers=None if exc.headers is None else dict(exc.headers))


def create_app(
    settings: Settings, publisher: Publisher | SpoolingPublisher | None = None, metrics: IngestMetrics | None = None
) -> Starlette:
    """Build the ingress. Its lifespan starts the publisher unless it runs already, and
    flushes and stops it at shutdown, after the server has finished in-flight requests."""
    metrics = metrics or IngestMetrics(known_origins=settings.known_origins)
    ingress = Ingress(settings, publisher or publisher_for(settings, Publisher(settings, metrics), metrics.registry),
                      metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingress.publisher.start()
        try:
            yield
        finally:
            ingress.draining = True
            await ingress.publisher.stop()

    routes = [
        Route(POSTBACK_PATH, ingress.receive_postback, methods=["POST"]),
        Route("/healthz", ingress.healthz, methods=["GET"]),
        Route("/readyz", ingress.readyz, methods=["GET"]),
        Route("/metrics", ingress.metrics_text, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestContext, metrics=metrics, routes={route.path for route in routes})],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.ingress = ingress
    return app
