"""The ingress's spans: SERVER per request, PRODUCER per record, and the forwarder's PRODUCER spans.

Hooks at the call sites (``ingest/app.py``, ``ingest/forwarder.py``) call these only when
``passpost.tracing.tracer`` is not None, so tracing off costs one ``is None`` test.

Attributes follow the HTTP and Kafka messaging semantic conventions. None holds what a
postback says (its REFERENCEVALUE is personal data): a span names the route, the status,
the refusal's code, the topic and the event id (a digest of the content).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from passpost import tracing
from passpost.ingest.records import Record
from passpost.ingest.routes import POSTBACK_PATH
from passpost.tracing import TRACEPARENT, TRACESTATE

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

SERVER_SPAN_NAME = f"POST {POSTBACK_PATH}"


async def serve_traced(tracer: Tracer, scope: Scope, serve: Callable[[], Awaitable[tuple[int, str | None]]]) -> None:
    """Run ``serve`` (which answers and returns the status and the refusal's code) inside a SERVER span that
    continues the caller's ``traceparent``; the access line, written inside, carries the span's ids."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    carrier = [(name.decode("latin-1"), value) for name, value in scope["headers"]
               if name in (b"traceparent", b"tracestate")]
    parent = tracing.context_from_headers(carrier) if carrier else None
    with tracer.start_as_current_span(SERVER_SPAN_NAME, context=parent, kind=SpanKind.SERVER,
                                      record_exception=False, set_status_on_exception=True) as span:
        # Attributes only on a span that is kept: at a ratio of 0.05, 19 requests in 20 build none. (The
        # samplers passpost documents decide on the trace id and the parent, not on attributes.)
        recording = span.is_recording()
        if recording:
            client = scope.get("client")
            span.set_attributes({
                "http.request.method": scope["method"],
                "http.route": POSTBACK_PATH,
                "url.path": scope["path"],  # never the query: it may hold the token
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
                **({"client.address": client[0]} if client else {}),
            })
        status, error_code = await serve()
        if recording:
            span.set_attribute("http.response.status_code", status)
            if error_code is not None:
                span.set_attribute("error.type", error_code)
            if status >= 500:  # a 4xx is the client's doing: not an error of this server (HTTP semconv)
                span.set_status(Status(StatusCode.ERROR))


def _headers_with(headers: list[tuple[str, bytes]] | None, context: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    kept = [(name, value) for name, value in headers or () if name not in (TRACEPARENT, TRACESTATE)]
    return kept + context


async def publish_traced(tracer: Tracer, publish: Callable[[str, Sequence[Record]], Awaitable[list[Any] | None]],
                         topic: str, records: Sequence[Record], event_ids: Sequence[str] | None = None) -> None:
    """``publish(topic, records)`` with a PRODUCER span per record, each record carrying its span's context.

    With a spool, the records (their headers included) are what is spooled, so a spooled record keeps the
    context of the span that first tried to send it."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    if not trace.get_current_span().is_recording():
        # The request is not sampled, so no span under it would be: the records carry the request's context
        # (its sampled flag off, which downstream samplers follow) and no span per record is made.
        context: list[tuple[str, bytes]] = []
        tracing.inject(context)
        await publish(topic, [(key, value, _headers_with(headers, context)) for key, value, headers in records])
        return
    spans: list[Span] = []
    traced: list[Record] = []
    for index, (key, value, headers) in enumerate(records):
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
            "messaging.message.body.size": len(value),
        }
        if event_ids is not None and index < len(event_ids):
            attributes["messaging.message.id"] = event_ids[index]
        span = tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes)
        spans.append(span)
        span_context: list[tuple[str, bytes]] = []
        tracing.inject(span_context, trace.set_span_in_context(span))
        traced.append((key, value, _headers_with(headers, span_context)))
    try:
        acknowledged = await publish(topic, traced)
    except BaseException as error:
        for span in spans:
            tracing.end_error(span, error)
        raise
    else:
        _acknowledged(spans, acknowledged)
    finally:
        for span in spans:
            span.end()


def _acknowledged(spans: Sequence[Span], acknowledged: list[Any] | None) -> None:
    """Kafka's partition and offset on each record's span, once it confirmed them; None: the spool kept the
    records, which the trace says (the forwarder's span, later in the same trace, names where they went)."""
    if acknowledged is None:
        for span in spans:
            span.set_attribute("passpost.spooled", True)
        return
    for span, metadata in zip(spans, acknowledged, strict=False):
        span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
        span.set_attribute("messaging.kafka.offset", metadata.offset)


async def forward_traced(tracer: Tracer, publish: Callable[[], Awaitable[list[Any]]], topic: str,
                         records: Sequence[Record]) -> None:
    """The forwarder's ``publish()`` of spooled records in one PRODUCER span per record, each linking the
    context the record was spooled with (which it still carries, unchanged, to the consumers)."""
    from opentelemetry.trace import SpanKind

    spans: list[Span] = []
    for _, value, headers in records:
        context = tracing.context_from_headers(headers)
        links, _ = tracing.links_of([tracing.span_context_of(context)])
        # In the request's trace (so the trace shows the spool's 200 and, later, the write to Kafka) and
        # linked to the span that spooled it, as the messaging conventions link a send to its creation.
        span = tracer.start_span(
            f"send {topic}", context=context, kind=SpanKind.PRODUCER, links=links,
            attributes={"messaging.system": "kafka", "messaging.operation.type": "send",
                        "messaging.operation.name": "send", "messaging.destination.name": topic,
                        "messaging.message.body.size": len(value), "passpost.spool.forwarded": True})
        spans.append(span)
    try:
        _acknowledged(spans, await publish())
    except BaseException as error:
        for span in spans:
            tracing.end_error(span, error)
        raise
    finally:
        for span in spans:
            span.end()
