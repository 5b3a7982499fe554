"""The consumers' spans: one per batch from the runtime, and a child per sink operation.

Every consumer gets the batch span (messaging "process", Kafka conventions) without writing a
line: ``Write`` runs a batch's write and commit inside it when tracing is on. It links the
creation context (``traceparent`` header) of each of its records, at most
``passpost.tracing.MAX_LINKS``, the rest counted in ``passpost.links.dropped``, and is a child of
the first sampled record's, so that one postback's trace holds every consumer's work on it. A sink marks
its own work with ``sink_span`` (the analytics transaction, each alert delivery, a dead-letter
write): a no-op when tracing is off.

``trace_id_of(item)`` names the trace an event was made in (its record's ``traceparent``), read
from the headers without the SDK, so an alert can name its trace even where this consumer does
not trace. The batch's records are found through a context variable set per batch (the sink runs
in the batch's task, and ``asyncio.to_thread`` copies the context).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from passpost import tracing

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from passpost.consumers.runtime.consumer import Item
    from passpost.consumers.runtime.decode import FetchedRecords
    from passpost.consumers.runtime.source import Fetched

# The records of the batch being written, for trace_id_of.
_batch_records: contextvars.ContextVar[FetchedRecords | None] = contextvars.ContextVar(
    "passpost_batch_records", default=None)


def start_batch(name: str, topic: str, fetched: Fetched) -> Span | None:
    """The span of a fetched batch, started before it is decoded (a dead letter of decoding is its child);
    None when tracing is off. ``run_batch`` ends it, or ``end_batch`` when the batch goes no further."""
    tracer = tracing.tracer
    if tracer is None:
        return None
    from opentelemetry.trace import Link, SpanKind

    # Links to the sampled creation contexts only (an unsampled one names a span no backend has), at most
    # MAX_LINKS: past them a record's headers are only scanned, not parsed, so a batch of thousands costs
    # little more than one of 128. The first sampled record's span is the parent, so that a postback's
    # trace shows what every consumer did with it; none sampled, the batch is a trace of its own.
    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    dropped = 0
    parent: Context | None = None
    count = 0
    for records in fetched.values():
        count += len(records)
        for record in records:
            headers = record.headers
            if not headers:
                continue
            if len(links) >= tracing.MAX_LINKS:
                dropped += any(name == tracing.TRACEPARENT for name, _ in headers)
                continue
            context = tracing.context_from_headers(headers)
            span_context = tracing.span_context_of(context)
            if span_context is None or not span_context.trace_flags.sampled:
                continue
            key = (span_context.trace_id, span_context.span_id)
            if key not in seen:
                seen.add(key)
                links.append(Link(span_context))
            if parent is None:
                parent = context
    attributes: dict[str, Any] = {
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": topic, "messaging.consumer.group.name": name,
        "messaging.batch.message_count": count,
    }
    if dropped:
        attributes[tracing.DROPPED_LINKS_ATTRIBUTE] = dropped
    return tracer.start_span(f"process {topic}", context=parent, kind=SpanKind.CONSUMER, links=links,
                             attributes=attributes)


@contextlib.contextmanager
def within(span: Span | None) -> Iterator[None]:
    """``span`` current for the block (decoding: its dead letters are its children), not ended after."""
    if span is None:
        yield
        return
    from opentelemetry.trace import use_span

    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def end_batch(span: Span | None) -> None:
    """End the span of a batch that is not written (abandoned, or behind one that was)."""
    if span is not None:
        span.set_attribute("passpost.batch.abandoned", True)
        span.end()


async def run_batch(span: Span | None, records: FetchedRecords, write: Callable[[], Awaitable[None]]) -> None:
    """``write()`` (the sink's write and the commit) for one batch, inside its span, which it ends."""
    _batch_records.set(records)  # this task's own context: the next batch's task sets its own
    if span is None:
        await write()
        return
    from opentelemetry.trace import use_span

    with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            await write()
        except BaseException as error:
            tracing.end_error(span, error)
            raise


@contextlib.contextmanager
def sink_span(name: str, kind: str = "client", attributes: dict[str, Any] | None = None) -> Iterator[Span | None]:
    """A child span of the current batch's for a sink's work (``kind``: client, producer or internal);
    None, and nothing made, when tracing is off. An exception marks it failed and goes on."""
    tracer = tracing.tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    kinds = {"client": SpanKind.CLIENT, "producer": SpanKind.PRODUCER, "internal": SpanKind.INTERNAL}
    with tracer.start_as_current_span(name, kind=kinds[kind], attributes=attributes, record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as error:
            tracing.end_error(span, error)
            raise


def trace_id_of(item: Item) -> str | None:
    """The trace id (32 hex digits) of the request that made ``item``'s event, or None when its record
    carries no ``traceparent`` (or outside a batch's write)."""
    records = _batch_records.get()
    if records is None:
        return None
    try:
        record = records.at(item.partition, item.offset)
    except KeyError:
        return None
    return tracing.trace_id_of_headers(record.headers)
