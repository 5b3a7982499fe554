"""schemas/binary.py writes the same bytes as fastavro's generic writer, for any event."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from io import BytesIO

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passpost.schemas import codec
from passpost.schemas.binary import WRITTEN_FIELDS, fields_of, write_body
from passpost.schemas.event import Outcome, PassPostback

UTC = timezone.utc


def fastavro_body(event: PassPostback) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, codec._WIRE_SCHEMA, event.to_record())
    return out.getvalue()


# XML text is what the values come from, but the writer must not depend on it: any string.
text = st.text(max_size=40)
optional = st.none() | text
instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@st.composite
def events(draw: st.DrawFn) -> PassPostback:
    generated_at = draw(st.none() | st.datetimes(timezones=offsets))
    return PassPostback(
        event_id=draw(text), origin=draw(text), status_code=draw(text), outcome=draw(st.sampled_from(Outcome)),
        code=draw(optional), referenced_by=draw(optional), reference_value=draw(optional),
        custom_pass_id=draw(optional), pass_data_id=draw(optional), serial_number=draw(optional),
        generated_at=generated_at, timestamp_raw=draw(optional), received_at=draw(instants),
        extra=draw(st.dictionaries(text, text, max_size=6)),
    )


@settings(max_examples=400, deadline=None)
@given(events())
def test_write_body_is_byte_for_byte_what_fastavro_writes(event: PassPostback) -> None:
    assert write_body(event) == fastavro_body(event)


@pytest.mark.parametrize("size", [63, 64, 127, 128, 4095, 4096, 70_000])
def test_long_strings_and_large_maps_take_multi_byte_lengths_as_fastavro_writes_them(size: int) -> None:
    value = ("a\u00e9\u20ac\U0001f600" * size)[:size]
    event = PassPostback(event_id=value, origin="GENERATE_PASS", status_code="N801", reference_value=value,
                         received_at=datetime(2026, 12, 1, tzinfo=UTC),
                         extra={f"ITEM[{n}]": value[: n % 50] for n in range(min(size, 5000))})
    assert write_body(event) == fastavro_body(event)


def test_write_body_round_trips_through_decode() -> None:
    event = PassPostback(event_id="e" * 32, origin="GENERATE_PASS", status_code="N811", outcome=Outcome.FAILURE,
                         reference_value="ana@example.com", generated_at=datetime(1969, 7, 20, 20, 17, 40, 1, UTC),
                         received_at=datetime(2026, 12, 1, 19, 0, tzinfo=UTC), extra={"PASSDATA/@id": "\u00e9" * 5000})
    assert codec.decode(codec.encode(event)) == event
    assert codec.encode(event) == codec.SINGLE_OBJECT_MAGIC + codec.SCHEMA_FINGERPRINT + fastavro_body(event)


def test_the_writer_covers_every_field_of_the_schema_in_order() -> None:
    assert fields_of(codec._AVSC) == WRITTEN_FIELDS


@pytest.mark.parametrize("change", ["add a field", "reorder", "widen a union", "rename a symbol"])
def test_a_schema_the_writer_was_not_made_for_is_noticed(change: str) -> None:
    avsc = copy.deepcopy(codec._AVSC)
    fields = avsc["fields"]
    if change == "add a field":
        fields.append({"name": "tier", "type": ["null", "string"], "default": None})
    elif change == "reorder":
        fields[1], fields[2] = fields[2], fields[1]
    elif change == "widen a union":
        next(f for f in fields if f["name"] == "code")["type"] = ["null", "string", "long"]
    else:
        next(f for f in fields if f["name"] == "outcome")["type"]["symbols"][0] = "OK"
    assert fields_of(avsc) != WRITTEN_FIELDS
