"""The consumers' spans: one per batch from the runtime, and a child per sink operation.

Every consumer gets the batch span (messaging "process", Kafka conventions) without writing a
line: ``Write`` runs a batch's write and commit inside it when tracing is on. It links the
creation context (``traceparent`` header) of each of its records, at most
``passpost.tracing.MAX_LINKS``, the rest counted in ``passpost.links.dropped``. A sink marks
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
    from opentelemetry.trace import Span

    from passpost.consumers.runtime.consumer import Item
    from passpost.consumers.runtime.decode import FetchedRecords

# The records of the batch being written, for trace_id_of.
_batch_records: contextvars.ContextVar[FetchedRecords | None] = contextvars.ContextVar(
    "passpost_batch_records", default=None)


async def run_batch(name: str, topic: str, records: FetchedRecords, size: int,
                    write: Callable[[], Awaitable[None]]) -> None:
    """``write()`` (the sink's write and the commit) for one batch, in its span when tracing is on."""
    _batch_records.set(records)  # this task's own context: the next batch's task sets its own
    tracer = tracing.tracer
    if tracer is None:
        await write()
        return
    from opentelemetry.trace import SpanKind

    links, dropped = tracing.links_of(
        tracing.span_context_of(tracing.context_from_headers(record.headers)) for record in records.all())
    attributes: dict[str, Any] = {
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": topic, "messaging.consumer.group.name": name,
        "messaging.batch.message_count": size,
    }
    if dropped:
        attributes[tracing.DROPPED_LINKS_ATTRIBUTE] = dropped
    # A root span of its own: a batch mixes records of many traces, which the links name.
    with tracer.start_as_current_span(f"process {topic}", kind=SpanKind.CONSUMER, links=links,
                                      attributes=attributes, record_exception=False,
                                      set_status_on_exception=False) as span:
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
