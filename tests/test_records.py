"""A body to its Kafka records (ingest/records.py), the pipeline the ingress and the replay share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from passpost.ingest.records import records_of
from passpost.ingest.refusal import Rejected
from passpost.schemas.codec import decode

VENDOR_EXAMPLE = (Path(__file__).parent / "data" / "vendor_example.xml").read_bytes()
RECEIVED = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_the_vendors_example_becomes_one_keyed_record_with_the_request_headers() -> None:
    made = records_of(VENDOR_EXAMPLE, "text/xml", RECEIVED, [("request_id", b"r1")], max_items=300,
                      max_record=1 << 20, schema_id=None)
    [(key, value, headers)] = made.records
    event = decode(value)
    assert key == b"5294CE37878AE-112613-113711" and headers == [("request_id", b"r1")]
    assert made.events == [(event.event_id, "SUCCESS", event.origin)] and made.recovered is True


def test_an_event_larger_than_kafka_takes_refuses_the_whole_body() -> None:
    with pytest.raises(Rejected) as rejected:
        records_of(VENDOR_EXAMPLE, "", RECEIVED, [], max_items=300, max_record=200, schema_id=None)
    assert rejected.value.code == "event_too_large" and rejected.value.status == 413


def test_a_body_that_is_no_postback_is_rejected_with_its_refusal() -> None:
    with pytest.raises(Rejected) as rejected:
        records_of(b"<NOTPOSTBACK/>", "", RECEIVED, [], max_items=300, max_record=1 << 20, schema_id=None)
    assert (rejected.value.status, rejected.value.code) == (422, "not_a_postback")
