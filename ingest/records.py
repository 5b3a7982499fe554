"""A request body to the records it puts on Kafka: the one pipeline of the ingress and of
``passpost dlq replay``.

body -> XML -> items (``postback.read_postbacks``, held to the request's ``OutputBudget``)
-> events (``Postback.to_event``) -> Avro records (keyed by pass, single-object or Confluent
framing) no larger than Kafka takes. Whatever stops it raises
``Rejected`` with the refusal the client gets (``refusal.py``); nothing is produced here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from passpost.ingest.postback import OutputBudget, read_postbacks
from passpost.ingest.refusal import Rejected
from passpost.schemas.codec import encode, encode_confluent
from passpost.schemas.event import PassPostback

Headers = list[tuple[str, bytes]]
Record = tuple[bytes | None, bytes, Headers | None]

# What a record adds around its key, value and headers in a batch (lengths, offsets, CRC).
RECORD_FRAMING_BYTES = 128


@dataclass(frozen=True, slots=True)
class BodyRecords:
    """The records of one body, and what the ingress counts of its events."""

    records: list[Record]
    events: list[tuple[str, str, str]]  # (event id, outcome, origin) of each event
    recovered: bool  # the vendor's printed example: its root's attributes dropped to parse it


def records_of(body: bytes, content_type: str, received_at: datetime, headers: Headers, *, max_items: int,
               max_record: int, schema_id: int | None) -> BodyRecords:
    """The XML tree and the event objects end here: a request waiting on Kafka holds only its body
    and its encoded records. ``Rejected`` when the body is no postback or too much for one request."""
    budget = OutputBudget(len(body), max_items)
    parsed = read_postbacks(body, content_type, budget)
    events = [postback.to_event(received_at) for postback in parsed.postbacks]
    records = bounded_records(events, headers, budget, max_record, schema_id)
    return BodyRecords(records, [(event.event_id, event.outcome.value, event.origin) for event in events],
                       parsed.recovered)


def event_records(events: Iterable[PassPostback], headers: Headers, schema_id: int | None = None) -> list[Record]:
    """Events as ``(key, value, headers)`` records for the events topic (docs/contract.md, "The events"): the
    Confluent wire format when a schema registry gave ``schema_id``, else single-object encoding."""
    if schema_id is not None:
        return [(event.kafka_key(), encode_confluent(event, schema_id), headers) for event in events]
    return [(event.kafka_key(), encode(event), headers) for event in events]


def bounded_records(events: Iterable[PassPostback], headers: Headers, budget: OutputBudget,
                    max_record: int, schema_id: int | None = None) -> list[Record]:
    """``event_records`` held to the request's ``budget`` and to the largest record Kafka
    takes (``max_record``): a request over either is refused whole, 413 ``event_too_large``."""
    records = event_records(events, headers, schema_id)
    header_bytes = sum(len(name) + len(value) for name, value in headers)
    produced = 0
    for key, value, _ in records:
        size = len(key or b"") + len(value)
        produced += size
        if size + header_bytes + RECORD_FRAMING_BYTES > max_record:
            raise Rejected(413, "event_too_large",
                           f"An event of this request would be {size} bytes, more than Kafka takes ({max_record}).")
    budget.check_encoded(produced)
    return records
