"""OpenTelemetry tracing, configured by the SDK's own ``OTEL_*`` variables and nothing else.

Tracing is on only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and neither ``OTEL_SDK_DISABLED=true`` nor
``OTEL_TRACES_EXPORTER=none`` says otherwise. Off, ``tracer`` is None: the SDK is not even
imported, no span object is made and no exporter thread runs; every hook in the code is one
``tracing.tracer is not None`` test (BENCHMARKS.md, issue 19).

On, the SDK reads the rest itself: the sampler (``OTEL_TRACES_SAMPLER``, ``_ARG``), the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the batch processor (``OTEL_BSP_*``) and the
exporter's endpoint and headers. ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks the exporter:
``http/protobuf`` (the default, a dependency) or ``grpc`` (the ``otlp-grpc`` extra: grpcio is
large, and the HTTP exporter reaches every collector).

The provider is this module's, not the API's global one: a process configures it once at
start, and tests can swap it (``record_spans``) without the API's set-once rule.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from passpost.errors import ConfigurationError

if TYPE_CHECKING:  # imported at run time only when tracing is on
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.trace import Link, Span, SpanContext, Tracer

__all__ = ["MAX_LINKS", "configure", "context_from_headers", "current_ids", "flush", "inject", "record_spans",
           "shutdown", "trace_id_of_headers", "tracer"]

# None while tracing is off; every hook tests it first.
tracer: Tracer | None = None
_provider: TracerProvider | None = None

# A span links at most this many records' creation contexts; the rest are counted in an attribute.
MAX_LINKS = 128
DROPPED_LINKS_ATTRIBUTE = "passpost.links.dropped"

_TRUE = {"1", "true", "yes", "on"}
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for tracing: an exporter endpoint, not disabled."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def configure(service_name: str) -> bool:
    """Turn tracing on for this process when the environment asks for it; True if it did.

    ``service_name`` is the default ``service.name`` (``passpost-ingress``, ``passpost-NAME``):
    ``OTEL_SERVICE_NAME`` or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` win over it.
    ``ConfigurationError`` (one line) for a protocol passpost cannot export with."""
    shutdown()
    if not wanted():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = _exporter()
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* read by the processor
    _install(provider)
    return True


def _exporter() -> Any:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: install passpost[otlp-grpc], "
                "or use http/protobuf") from None
        return GrpcExporter()
    raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of http/protobuf, grpc")


def _install(provider: TracerProvider) -> None:
    global tracer, _provider
    from passpost import __version__

    _provider = provider
    tracer = provider.get_tracer("passpost", __version__)


def flush(timeout_seconds: float = 10.0) -> None:
    """Export every finished span now (tests, and before a process exits)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_seconds * 1000))


def shutdown() -> None:
    """Export what is left and stop the exporter thread; tracing is off afterwards."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def record_spans() -> Iterator[list[ReadableSpan]]:
    """Tracing on, into the list this yields (every span, sampled always), for a test's ``with``
    block; the process's own tracing (or none) comes back after it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    spans: list[ReadableSpan] = []

    class _Collect(SpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    global tracer, _provider
    saved = tracer, _provider
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(_Collect()))
    _install(provider)
    try:
        yield spans
    finally:
        tracer, _provider = saved


# -- W3C trace context in Kafka record headers ---------------------------------------------------


def inject(headers: list[tuple[str, bytes]], context: Context | None = None) -> None:
    """Append ``traceparent`` (and ``tracestate``) of ``context`` (the current one when None)."""
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context)
    for name in (TRACEPARENT, TRACESTATE):
        value = carrier.get(name)
        if value:
            headers.append((name, value.encode("ascii")))


def context_from_headers(headers: Iterable[tuple[str | bytes, bytes]] | None) -> Context | None:
    """The trace context a record's (or a request's) ``traceparent``/``tracestate`` carry, or None."""
    carrier: dict[str, str] = {}
    for name, value in headers or ():
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        key = key.lower()
        if key in (TRACEPARENT, TRACESTATE) and value is not None:
            carrier[key] = value.decode("latin-1")
    if TRACEPARENT not in carrier:
        return None
    from opentelemetry.trace import get_current_span

    context = _propagator().extract(carrier)
    return context if get_current_span(context).get_span_context().is_valid else None


@functools.cache
def _propagator() -> Any:
    """W3C trace context, made once (a request may inject several times)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def span_context_of(context: Context | None) -> SpanContext | None:
    if context is None:
        return None
    from opentelemetry.trace import get_current_span

    return get_current_span(context).get_span_context()


def trace_id_of_headers(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """The 32 hex digits of a ``traceparent`` header, parsed without the SDK (tracing may be off)."""
    for name, value in headers or ():
        if name == TRACEPARENT and value is not None:
            parts = value.split(b"-")
            if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != b"0" * 32:
                try:
                    int(parts[1], 16)
                except ValueError:
                    return None
                return parts[1].decode("ascii")
    return None


def links_of(contexts: Iterable[SpanContext | None]) -> tuple[list[Link], int]:
    """Links to at most ``MAX_LINKS`` distinct valid contexts, and how many more there were."""
    from opentelemetry.trace import Link

    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    dropped = 0
    for span_context in contexts:
        if span_context is None or not span_context.is_valid:
            continue
        key = (span_context.trace_id, span_context.span_id)
        if key in seen:
            continue
        seen.add(key)
        if len(links) < MAX_LINKS:
            links.append(Link(span_context))
        else:
            dropped += 1
    return links, dropped


# -- logs and metrics ----------------------------------------------------------------------------


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the span current here, or None (off, or no span)."""
    if tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    span_context = get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def exemplar() -> dict[str, str] | None:
    """The current sampled span's trace id as a Prometheus exemplar, or None."""
    if tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    span_context = get_current_span().get_span_context()
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None  # an exemplar should lead to a trace the backend has
    return {"trace_id": f"{span_context.trace_id:032x}"}


def end_error(span: Span, error: BaseException | str) -> None:
    """Mark ``span`` failed with ``error.type`` (an exception's class name or a code)."""
    from opentelemetry.trace import Status, StatusCode

    kind = error if isinstance(error, str) else type(error).__name__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, None if isinstance(error, str) else str(error)[:200]))
