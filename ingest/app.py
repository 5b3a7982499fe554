"""The ingress: a Starlette app that turns pass postbacks into Kafka events.

``POST /postbacks/passes`` answers (docs/contract.md, "The HTTP answers"):

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
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from passpost import tracing
from passpost.ingest.auth import TokenCheck
from passpost.ingest.connection import TIMED_OUT
from passpost.ingest.episodes import RefusalEpisodes
from passpost.ingest.forwarder import SpoolingPublisher, publisher_for
from passpost.ingest.metrics import IngestMetrics, exposition
from passpost.ingest.middleware import RequestContext, RequestLog, request_id_of
from passpost.ingest.publisher import EventTooLarge, Publisher
from passpost.ingest.records import Record, records_of
from passpost.ingest.refusal import Refusal, Rejected
from passpost.ingest.routes import ALL_PATHS, HEALTH_PATH, METRICS_PATH, POSTBACK_PATH, READY_PATH
from passpost.ingest.spool import SpoolRefused
from passpost.ingest.tracing import publish_traced, serve_traced
from passpost.kafka import KafkaUnavailable, max_record_bytes
from passpost.settings import Settings

log = logging.getLogger("passpost.ingest")



class BodyTooLarge(Exception):
    pass


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """A refusal as a Starlette response, for the routes Starlette serves."""
    refusal = Refusal(status, code, detail, tuple((headers or {}).items()))
    body = refusal.body()
    response = Response(body, status_code=status)
    response.raw_headers = refusal.raw_headers(body)
    return response


@dataclass(frozen=True, slots=True)
class Answer:
    """What the postback route answers: status, headers (``Content-Length`` and
    ``Content-Type`` included), body, and what the access line adds."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    error_code: str | None = None
    log_fields: dict[str, Any] | None = None

    @classmethod
    def refusal(cls, refusal: Refusal) -> Answer:
        body = refusal.body()
        return cls(refusal.status, refusal.raw_headers(body), body, refusal.code)

    @classmethod
    def accepted(cls, event_ids: list[str]) -> Answer:
        # The same bytes JSONResponse would render ({"events":N,"event_ids":[...]}, compact): event
        # ids are hex digests, which JSON holds without escapes, so no encoder is needed.
        ids = ",".join(f'"{event_id}"' for event_id in event_ids).encode()
        body = b'{"events":%d,"event_ids":[%s]}' % (len(event_ids), ids)
        return cls(200, [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")], body,
                   log_fields={"events": len(event_ids)})


INTERNAL_ERROR = Refusal(500, "internal_error", "The ingress failed to handle the request; nothing was acknowledged.")
_UNAUTHORIZED = Refusal(401, "unauthorized", "A valid token is required: ?token=, a Bearer token or a Basic password.",
                        (("WWW-Authenticate", 'Bearer realm="passpost", Basic realm="passpost"'),))
_DISCONNECTED = Refusal(400, "client_disconnected", "The client went away before sending the whole body.")


class Ingress:
    """The endpoints, holding what they share: settings, credentials, producer, metrics."""

    def __init__(self, settings: Settings, publisher: Publisher | SpoolingPublisher, metrics: IngestMetrics) -> None:
        self.settings = settings
        self.publisher = publisher
        self.metrics = metrics
        self.tokens = TokenCheck(settings.ingest_tokens, open_access=settings.ingest_open)
        self.draining = False
        self.episodes = RefusalEpisodes(metrics.refusal_episodes.inc)

    async def _publish(self, topic: str, records: list[Record], event_ids: list[str] | None = None) -> None:
        tracer = tracing.tracer
        if tracer is None:
            await self.publisher.publish(topic, records)
        else:  # a PRODUCER span per record, its context in the record's headers
            await publish_traced(tracer, self.publisher.publish, topic, records, event_ids)

    async def answer_postback(self, scope: Scope, receive: Receive, request_id: str) -> Answer:
        """``receive_postback``, with a bug of its own answered as a JSON 500 (and its traceback
        logged): what either server (``PostbackEndpoint``, ``ingest/protocol.py``) sends."""
        try:
            return await self.receive_postback(scope, receive, request_id)
        except Exception:  # a bug, not the client's doing
            log.exception("the postback route failed (request_id %s)", request_id)
            return Answer.refusal(INTERNAL_ERROR)

    async def receive_postback(self, scope: Scope, receive: Receive, request_id: str) -> Answer:
        """``POST /postbacks/passes``, as a plain ASGI endpoint (see ``IngressApp``)."""
        if not self.tokens.allows(scope):
            return Answer.refusal(_UNAUTHORIZED)
        content_type = declared_length = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared_length = value.decode("latin-1")
        try:
            body = await self._read_body(receive, declared_length)
        except BodyTooLarge:
            return Answer.refusal(Refusal(413, "body_too_large",
                                          f"The body exceeds {self.settings.max_body_bytes} bytes."))
        except ClientDisconnect:
            timed_out: Refusal | None = scope.get(TIMED_OUT)
            if timed_out is not None:  # answered by the connection already; this is for the log
                return Answer.refusal(timed_out)
            return Answer.refusal(_DISCONNECTED)
        received_at = datetime.now(timezone.utc)
        try:
            made = records_of(body, content_type, received_at, [("request_id", request_id.encode())],
                              max_items=self.settings.max_items, max_record=max_record_bytes(self.settings),
                              schema_id=self.publisher.schema_id)
        except Rejected as rejected:
            return await self._dead_letter(body, rejected, received_at, content_type, request_id)
        try:
            await self._publish(self.settings.events_topic, made.records,
                                [event_id for event_id, _, _ in made.events])
        except (KafkaUnavailable, SpoolRefused) as unavailable:
            return self._unavailable(unavailable)
        except EventTooLarge as too_large:
            refusal = Rejected(413, "event_too_large", f"Kafka refused an event of this request as too large: "
                                                       f"{too_large}")
            return await self._dead_letter(body, refusal, received_at, content_type, request_id)
        if made.recovered:
            self.metrics.recoveries.inc()
        count_event = self.metrics.count_event
        for _, outcome, origin in made.events:
            count_event(outcome, origin)
        self.episodes.accepted()
        return Answer.accepted([event_id for event_id, _, _ in made.events])

    async def _read_body(self, receive: Receive, declared_length: str) -> bytes:
        limit = self.settings.max_body_bytes
        if declared_length.isdigit() and int(declared_length) > limit:
            raise BodyTooLarge  # refused before a byte of it is read
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)  # a single chunk comes back as it is, uncopied

    async def _dead_letter(
        self, body: bytes, rejected: Rejected, received_at: datetime, content_type: str, request_id: str
    ) -> Answer:
        headers = [
            ("error", rejected.code.encode()),
            ("detail", rejected.detail.encode()),
            ("received_at", received_at.isoformat().encode()),
            ("content_type", content_type.encode("latin-1", "replace")),
            ("request_id", request_id.encode()),
        ]
        try:
            await self._publish(self.settings.dead_letter_topic, [(None, body, headers)])
        except (KafkaUnavailable, SpoolRefused) as unavailable:
            # Not kept yet, so not refused yet either: the sender retries and nothing is lost.
            return self._unavailable(unavailable)
        self.metrics.dead_letters.labels(rejected.code).inc()
        return Answer.refusal(rejected.refusal)

    def _unavailable(self, unavailable: KafkaUnavailable | SpoolRefused) -> Answer:
        """503: nothing was kept, so the sender's retry loses nothing."""
        self.episodes.refused(unavailable)
        if isinstance(unavailable, SpoolRefused):
            code = unavailable.code
            detail = "The spool that keeps postbacks while Kafka is away cannot take this one; retry later."
        else:
            code, detail = "kafka_unavailable", "Kafka did not confirm the postback in time; retry later."
        return Answer.refusal(Refusal(503, code, detail, (("Retry-After", str(self.settings.retry_after_seconds)),)))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.draining:
            return error(503, "shutting_down", "The ingress is shutting down.")
        if not await self.publisher.ready():
            return error(503, "kafka_not_connected", "The producer has no connection to Kafka.")
        return JSONResponse({"status": "ready"})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = exposition(self.metrics.registry, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                 headers=None if exc.headers is None else dict(exc.headers))


class PostbackEndpoint:
    """``POST /postbacks/passes`` as a plain ASGI app: request id, ``Ingress.receive_postback``,
    the answer, and the access line and metrics from ``RequestLog``."""

    def __init__(self, ingress: Ingress, requests: RequestLog) -> None:
        self.ingress = ingress
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = tracing.tracer
        if tracer is None:
            await self._serve(scope, receive, send)
        else:
            await serve_traced(tracer, scope, lambda: self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str | None]:
        """Answer; the status and refusal code, for the request's span."""
        started = time.perf_counter()
        request_id = request_id_of(scope)
        answer = await self.ingress.answer_postback(scope, receive, request_id)
        try:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [*answer.headers, (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.requests.done(scope, request_id, started, answer.status, answer.error_code, answer.log_fields)
        return answer.status, answer.error_code


class IngressApp(Starlette):
    """The ingress's Starlette app, with ``POST /postbacks/passes`` taken straight to its endpoint.

    Every request of the pipeline goes that way, and Starlette's layers (error and
    exception middleware, router, ``Request``, ``JSONResponse``) are a measurable share of its
    CPU (BENCHMARKS.md, issue 13). The endpoint does
    itself what they did for it; every other route and method goes through them.
    """

    def __init__(self, postback: PostbackEndpoint, **options: Any) -> None:
        super().__init__(**options)
        self.postback = postback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == POSTBACK_PATH:
            scope["app"] = self  # as Starlette.__call__ sets it for every other route
            await self.postback(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, publisher: Publisher | SpoolingPublisher | None = None, metrics: IngestMetrics | None = None
) -> IngressApp:
    """Build the ingress. Its lifespan starts the publisher unless it runs already, and
    flushes and stops it at shutdown, after the server has finished in-flight requests."""
    metrics = metrics or IngestMetrics(known_origins=settings.known_origins)
    ingress = Ingress(settings, publisher or publisher_for(settings, Publisher(settings, metrics), metrics.registry),
                      metrics)
    if tracing.tracer is None:  # each process once (`serve --workers N`: each worker), from OTEL_* only
        tracing.configure("passpost-ingress")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingress.publisher.start()
        try:
            yield
        finally:
            ingress.draining = True
            await ingress.publisher.stop()

    requests = RequestLog(metrics, ALL_PATHS)
    postback = PostbackEndpoint(ingress, requests)
    routes = [
        # IngressApp takes POSTs before routing; the route answers other methods 405.
        Route(POSTBACK_PATH, postback, methods=["POST"]),
        Route(HEALTH_PATH, ingress.healthz, methods=["GET"]),
        Route(READY_PATH, ingress.readyz, methods=["GET"]),
        Route(METRICS_PATH, ingress.metrics_text, methods=["GET"]),
    ]
    app = IngressApp(
        postback,
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestContext, requests=requests)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.ingress = ingress
    return app
