"""The event's fields are written out once, in ``schemas/pass_postback.avsc``; every other place that
lists them is derived from it or checked here against it, value by value, so that two fields of the
same type swapped somewhere (a text column for another) fails a test instead of corrupting data."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import fastavro

from passpost.consumers.analytics import AnalyticsConsumer
from passpost.consumers.analytics import columns as analytics_columns
from passpost.ingest.postback import KNOWN_ELEMENTS, read_postbacks
from passpost.schemas.codec import SCHEMA, decode, encode
from passpost.schemas.event import Outcome, PassPostback
from passpost.settings import defaults

FIELDS = [field["name"] for field in SCHEMA["fields"]]
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
GENERATED = datetime(2013, 11, 26, 16, 37, 11, tzinfo=UTC)
TEXT_FIELDS = [field.name for field in dataclasses.fields(PassPostback)
               if field.type in ("str", "str | None") and field.name != "outcome"]


def distinct_event() -> PassPostback:
    """Every text field holds its own name: a value under another field's name gives a swap away."""
    return PassPostback(**{name: f"<{name}>" for name in TEXT_FIELDS}, outcome=Outcome.FAILURE,
                        generated_at=GENERATED, received_at=RECEIVED, extra={"<extra>": "<extra value>"})


def test_the_event_class_has_the_schema_s_fields_in_order() -> None:
    assert [field.name for field in dataclasses.fields(PassPostback)] == FIELDS
    assert len(TEXT_FIELDS) >= 9


def test_to_record_puts_every_value_under_its_own_name_and_the_wire_keeps_it() -> None:
    event = distinct_event()
    record = event.to_record()
    assert list(record) == FIELDS
    for name in TEXT_FIELDS:
        assert record[name] == f"<{name}>"
    # Read back by name with fastavro alone (not the project's decode), then through decode.
    payload = encode(event)
    raw = fastavro.schemaless_reader(io.BytesIO(payload[10:]), SCHEMA)
    assert {name: raw[name] for name in TEXT_FIELDS} == {name: f"<{name}>" for name in TEXT_FIELDS}
    assert decode(payload) == event


def test_every_known_xml_element_lands_in_the_schema_field_of_its_name() -> None:
    assert set(KNOWN_ELEMENTS.values()) <= set(FIELDS)
    elements = "".join(f"<{element}>v-{field}</{element}>" for element, field in KNOWN_ELEMENTS.items()
                       if element not in {"STATUSCODE", "TIMESTAMP"})
    stamp = "2013-11-26T11:37:11-05:00"
    body = f"<POSTBACK><STATUSCODE>N802</STATUSCODE>{elements}<TIMESTAMP>{stamp}</TIMESTAMP></POSTBACK>".encode()
    [postback] = read_postbacks(body, "application/xml").postbacks
    event = postback.to_event(RECEIVED)
    for element, field in KNOWN_ELEMENTS.items():
        expected = {"STATUSCODE": "N802", "TIMESTAMP": stamp}.get(element, f"v-{field}")
        assert getattr(event, field) == expected, element


def test_the_analytics_table_is_the_schema_s_fields_then_where_they_were_read() -> None:
    assert analytics_columns.COLUMNS == (*FIELDS, "kafka_topic", "kafka_partition", "kafka_offset")
    # The same table as before it was derived: nothing changes for a store that exists.
    before = ("CREATE TABLE IF NOT EXISTS pass_postbacks (event_id TEXT PRIMARY KEY, origin TEXT NOT NULL, "
              "status_code TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT, referenced_by TEXT, reference_value TEXT, "
              "custom_pass_id TEXT, pass_data_id TEXT, serial_number TEXT, generated_at {ts}, timestamp_raw TEXT, "
              "received_at {ts} NOT NULL, extra {json}, kafka_topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, "
              "kafka_offset BIGINT NOT NULL)")
    assert analytics_columns.table_definition() == before


def test_an_analytics_row_holds_each_value_in_the_column_of_its_name() -> None:
    consumer = AnalyticsConsumer(defaults().replace(analytics_reference_value="keep"))
    row = dict(zip(analytics_columns.COLUMNS, consumer.row(distinct_event(), "topic", 3, 42), strict=True))
    for name in TEXT_FIELDS:
        assert row[name] == f"<{name}>", name
    assert (row["outcome"], row["generated_at"], row["received_at"]) == ("FAILURE", GENERATED, RECEIVED)
    assert row["extra"] == '{"<extra>": "<extra value>"}'
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("topic", 3, 42)
