"""The Avro wire contract: framings, fingerprint, schema resolution, errors."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from importlib import resources
from io import BytesIO
from typing import Any

import fastavro
import fastavro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passpost.schemas import codec
from passpost.schemas.codec import (
    SCHEMA,
    SCHEMA_FINGERPRINT,
    DecodeError,
    SchemaResolver,
    StaticResolver,
    crc64_avro,
    decode,
    encode,
    encode_confluent,
    schema_fingerprint,
)
from passpost.schemas.event import Outcome, PassPostback

UTC = timezone.utc


def load_avsc() -> dict[str, Any]:
    text = resources.files("passpost.schemas").joinpath("pass_postback.avsc").read_text("utf-8")
    return json.loads(text)


def full_event(**overrides: Any) -> PassPostback:
    fields: dict[str, Any] = {
        "event_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "origin": "GENERATE_PASS",
        "status_code": "N801",
        "outcome": Outcome.SUCCESS,
        "code": "N801",
        "referenced_by": "Email",
        "reference_value": "someone@example.com",
        "custom_pass_id": "CP-7",
        "pass_data_id": "PD-42",
        "serial_number": "SN-0001",
        "generated_at": datetime(2013, 11, 26, 16, 37, 11, 654321, tzinfo=UTC),
        "timestamp_raw": "2013-11-26T11:37:11-05:00",
        "received_at": datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC),
        "extra": {"PASSDATA/BARCODEVALUE": "123456", "PASSDATA/HEADERLABEL1": "Gate"},
    }
    fields.update(overrides)
    return PassPostback(**fields)


def minimal_event() -> PassPostback:
    return PassPostback(
        event_id="e",
        origin="GENERATE_PASS",
        status_code="N802",
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


def plain_fastavro_read(body: bytes) -> dict[str, Any]:
    # Independent of codec.py: the schema straight from the file, stock fastavro.
    schema = fastavro.parse_schema(load_avsc())
    return fastavro.schemaless_reader(BytesIO(body), schema)  # type: ignore[return-value]


# --- the schema file -------------------------------------------------------------


def test_avsc_is_the_documented_contract() -> None:
    avsc = load_avsc()
    assert (avsc["type"], avsc["namespace"], avsc["name"]) == ("record", "passpost", "PassPostback")
    assert SCHEMA["name"] == "passpost.PassPostback"
    assert avsc["doc"]
    assert all(f.get("doc") for f in avsc["fields"])
    fields = {f["name"]: f for f in avsc["fields"]}
    outcome = fields["outcome"]
    assert outcome["type"]["name"] == "Outcome"
    assert outcome["type"]["default"] == "UNKNOWN"
    assert outcome["default"] == "UNKNOWN"
    for name in ("generated_at", "received_at"):
        ts = fields[name]["type"]
        ts = ts[1] if isinstance(ts, list) else ts
        assert ts == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["extra"]["type"] == {"type": "map", "values": "string"}
    assert fields["extra"]["default"] == {}
    assert "default" not in fields["received_at"]


# --- fingerprint ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "signed"),
    # Test vectors from the Avro project's share/test/data/schema-tests.txt,
    # which prints the fingerprint as a Java (signed) long.
    [
        ('"null"', 7195948357588979594),
        ('"boolean"', -6970731678124411036),
        ('"int"', 8247732601305521295),
        ('"long"', -3434872931120570953),
    ],
)
def test_crc64_avro_matches_the_avro_test_vectors(text: str, signed: int) -> None:
    assert crc64_avro(text.encode()) == signed % 2**64


def test_schema_fingerprint_matches_the_avro_test_vector_and_byte_order() -> None:
    # Also from schema-tests.txt; the wire carries the Java long little-endian.
    fixed = {"name": "foo", "type": "fixed", "size": 15}
    assert schema_fingerprint(fixed) == (1756455273707447556).to_bytes(8, "little")


def test_fingerprint_matches_fastavro() -> None:
    canonical = fastavro.schema.to_parsing_canonical_form(SCHEMA)
    # fastavro returns hex of the little-endian bytes, which is what goes on the wire.
    theirs = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    assert SCHEMA_FINGERPRINT == theirs
    assert len(SCHEMA_FINGERPRINT) == 8
    assert SCHEMA_FINGERPRINT == crc64_avro(canonical.encode()).to_bytes(8, "little")


@pytest.mark.parametrize(
    "schema",
    [
        "string",
        {"type": "map", "values": "long"},
        {"type": "enum", "name": "a.E", "symbols": ["X"]},
    ],
)
def test_schema_fingerprint_matches_fastavro_for_other_schemas(schema: Any) -> None:
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    theirs = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    assert schema_fingerprint(schema) == theirs


def test_fingerprint_is_pinned() -> None:
    # Fails on ANY change to the schema's canonical form. That is deliberate:
    # a new fingerprint means consumers need the old schema in their resolver
    # to keep reading what is already on the topic. Update consciously.
    assert SCHEMA_FINGERPRINT.hex() == "c5df4666e4989cf2"


def test_docs_and_defaults_do_not_change_the_fingerprint() -> None:
    avsc = load_avsc()
    avsc["doc"] = "something else"
    avsc["fields"][0]["doc"] = "changed"
    assert schema_fingerprint(avsc) == SCHEMA_FINGERPRINT


# --- single-object framing -----------------------------------------------------------


def test_single_object_header_bytes() -> None:
    data = encode(full_event())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == SCHEMA_FINGERPRINT
    assert data[:10] == b"\xc3\x01" + bytes.fromhex("c5df4666e4989cf2")


def test_plain_fastavro_reads_our_encoding() -> None:
    event = full_event()
    record = plain_fastavro_read(encode(event)[10:])
    assert record == {
        "event_id": event.event_id,
        "origin": "GENERATE_PASS",
        "status_code": "N801",
        "outcome": "SUCCESS",
        "code": "N801",
        "referenced_by": "Email",
        "reference_value": "someone@example.com",
        "custom_pass_id": "CP-7",
        "pass_data_id": "PD-42",
        "serial_number": "SN-0001",
        "generated_at": datetime(2013, 11, 26, 16, 37, 11, 654321, tzinfo=UTC),
        "timestamp_raw": "2013-11-26T11:37:11-05:00",
        "received_at": datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC),
        "extra": {"PASSDATA/BARCODEVALUE": "123456", "PASSDATA/HEADERLABEL1": "Gate"},
    }


def test_we_decode_what_plain_fastavro_writes() -> None:
    # Another producer, using only the .avsc and stock fastavro with datetimes.
    event = full_event()
    record = event.to_record()
    record["generated_at"] = event.generated_at
    record["received_at"] = event.received_at
    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(load_avsc()), record)
    data = b"\xc3\x01" + SCHEMA_FINGERPRINT + out.getvalue()
    assert data == encode(event)
    assert decode(data) == event


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        full_event(),
        minimal_event(),
        full_event(extra={}),
        full_event(outcome=Outcome.FAILURE, status_code="E42"),
        full_event(outcome=Outcome.UNKNOWN),
        # Unicode in values, keys and the map; NUL and astral-plane characters.
        full_event(
            reference_value="zoë@exämple.com",
            custom_pass_id="票-№7-🎫",
            serial_number="a\x00b",
            extra={"PASSDATA/ÉTIQUETTE": "valeur ✓", "": "", "X/Y/Z": "𝄞" * 100},
        ),
        # Empty strings stay empty strings (ingest decides what becomes null).
        full_event(code="", origin=""),
        # Microseconds at both edges, pre-epoch and far future.
        full_event(generated_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        full_event(generated_at=datetime(1, 1, 1, tzinfo=UTC)),
        full_event(received_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        full_event(received_at=datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
        # A large map needs more than one varint byte for its count.
        full_event(extra={f"K/{i}": str(i) for i in range(300)}),
    ],
    ids=[
        "full",
        "minimal",
        "empty-extra",
        "failure",
        "unknown",
        "unicode",
        "empty-strings",
        "pre-epoch",
        "year-1",
        "year-9999",
        "epoch+1us",
        "big-map",
    ],
)
def test_round_trip(event: PassPostback) -> None:
    decoded = decode(encode(event))
    assert decoded == event
    assert decoded.received_at.tzinfo is UTC
    assert decoded.generated_at is None or decoded.generated_at.tzinfo is UTC
    assert decoded.outcome is event.outcome


def test_round_trip_normalises_offsets_to_utc() -> None:
    est = timezone(timedelta(hours=-5))
    event = full_event(generated_at=datetime(2013, 11, 26, 11, 37, 11, 1, tzinfo=est))
    decoded = decode(encode(event))
    assert decoded.generated_at == datetime(2013, 11, 26, 16, 37, 11, 1, tzinfo=UTC)
    assert decoded.generated_at.tzinfo is UTC


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(full_event())
    assert decode(bytearray(data)) == full_event()  # type: ignore[arg-type]
    assert decode(memoryview(data)) == full_event()  # type: ignore[arg-type]


# --- Confluent framing --------------------------------------------------------------


def test_confluent_framing_bytes() -> None:
    event = full_event()
    data = encode_confluent(event, 42)
    assert data[:5] == b"\x00\x00\x00\x00\x2a"
    assert data[5:] == encode(event)[10:]
    assert plain_fastavro_read(data[5:])["serial_number"] == "SN-0001"
    assert encode_confluent(event, 2**32 - 1)[:5] == b"\x00\xff\xff\xff\xff"


def test_confluent_decode_with_a_mapping() -> None:
    event = full_event()
    resolver = StaticResolver({42: SCHEMA})
    assert decode(encode_confluent(event, 42), resolver=resolver) == event
    # Registries serve schemas as JSON text; that works too.
    resolver = StaticResolver({7: json.dumps(load_avsc())})
    assert decode(encode_confluent(event, 7), resolver=resolver) == event
    # A resolver given ids still knows our own fingerprint.
    assert decode(encode(event), resolver=resolver) == event


def test_confluent_unknown_id_without_registry() -> None:
    with pytest.raises(DecodeError, match="schema id 42"):
        decode(encode_confluent(full_event(), 42))
    with pytest.raises(DecodeError, match="schema id 43"):
        decode(encode_confluent(full_event(), 43), resolver=StaticResolver({42: SCHEMA}))


@pytest.mark.parametrize("schema_id", [-1, 2**32])
def test_confluent_id_out_of_range(schema_id: int) -> None:
    with pytest.raises(ValueError, match="schema id"):
        encode_confluent(full_event(), schema_id)


# --- schema evolution through the resolver ---------------------------------------------


def evolved_writer_schema() -> dict[str, Any]:
    """A later, backward-compatible version: a new field and a new enum symbol."""
    avsc = copy.deepcopy(load_avsc())
    fields = avsc["fields"]
    outcome = next(f for f in fields if f["name"] == "outcome")
    outcome["type"]["symbols"].append("PARTIAL")
    fields.insert(3, {"name": "channel", "type": "string", "default": "web"})
    return avsc


def older_writer_schema() -> dict[str, Any]:
    """An earlier version without `extra` and `timestamp_raw`."""
    avsc = copy.deepcopy(load_avsc())
    avsc["fields"] = [f for f in avsc["fields"] if f["name"] not in {"extra", "timestamp_raw"}]
    return avsc


def write_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_newer_writer_schema_resolves_onto_ours() -> None:
    writer = evolved_writer_schema()
    record = full_event().to_record()
    record["channel"] = "api"
    record["outcome"] = "PARTIAL"
    body = write_with(writer, record)
    framed = b"\xc3\x01" + schema_fingerprint(writer) + body

    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        decode(framed)

    event = decode(framed, resolver=StaticResolver(schemas=[writer]))
    # A symbol we do not know falls back to the enum default.
    assert event.outcome is Outcome.UNKNOWN
    assert event == full_event(outcome=Outcome.UNKNOWN)

    by_id = decode(b"\x00\x00\x00\x00\x09" + body, resolver=StaticResolver({9: writer}))
    assert by_id == event


def test_older_writer_schema_gets_our_defaults() -> None:
    writer = older_writer_schema()
    record = full_event().to_record()
    del record["extra"], record["timestamp_raw"]
    framed = b"\xc3\x01" + schema_fingerprint(writer) + write_with(writer, record)
    event = decode(framed, resolver=StaticResolver(schemas=[writer]))
    assert event == full_event(extra={}, timestamp_raw=None)


def test_incompatible_writer_schema_is_a_decode_error() -> None:
    writer = copy.deepcopy(load_avsc())
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "origin"]
    record = full_event().to_record()
    del record["origin"]
    framed = b"\xc3\x01" + schema_fingerprint(writer) + write_with(writer, record)
    with pytest.raises(DecodeError, match="incompatible"):
        decode(framed, resolver=StaticResolver(schemas=[writer]))


def test_custom_resolver_satisfies_the_protocol() -> None:
    calls: list[Any] = []

    class Registry:
        def by_fingerprint(self, fp: bytes) -> Any:
            calls.append(fp)
            return None

        def by_id(self, schema_id: int) -> Any:
            calls.append(schema_id)
            return SCHEMA if schema_id == 5 else None

    resolver: SchemaResolver = Registry()
    event = full_event()
    assert decode(encode_confluent(event, 5), resolver=resolver) == event
    # Our own fingerprint never needs a lookup.
    assert decode(encode(event), resolver=resolver) == event
    assert calls == [5]


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xc3", "magic"),
        (b"\xc3\x02" + bytes(20), "magic"),
        (b"\x01\x02\x03", "magic"),
        (b"{}", "magic"),
        (b"\xc3\x01", "too short"),
        (b"\xc3\x01\x00\x01\x02", "too short"),
        (b"\x00", "too short"),
        (b"\x00\x00\x00\x01", "too short"),
        (b"\xc3\x01" + bytes(8) + b"\x02ab", "unknown writer schema fingerprint 0000000000000000"),
    ],
)
def test_bad_framing(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize("cut", [10, 11, 30, 60, -1])
def test_truncated_body(cut: int) -> None:
    data = encode(full_event())
    with pytest.raises(DecodeError, match="corrupt"):
        decode(data[:cut])


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" * 30,  # a varint that never ends
        b"\x01" * 40,  # negative string length
        b"\x02a\x02b\x02c\x06",  # enum index 3 of 3 symbols
        b"\x02a\x02b\x02c\x00\x06",  # union branch out of range
        b"\x02\xff\xfe\x02b\x02c\x00" + bytes(20),  # invalid UTF-8
    ],
)
def test_corrupt_body(body: bytes) -> None:
    with pytest.raises(DecodeError, match="corrupt"):
        decode(b"\xc3\x01" + SCHEMA_FINGERPRINT + body)


def test_trailing_bytes_are_corruption() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(encode(full_event()) + b"\x00")


def test_confluent_corrupt_body() -> None:
    resolver = StaticResolver({1: SCHEMA})
    with pytest.raises(DecodeError, match="corrupt"):
        decode(encode_confluent(full_event(), 1)[:-3], resolver=resolver)


def test_decode_error_keeps_the_cause() -> None:
    with pytest.raises(DecodeError) as info:
        decode(encode(full_event())[:20])
    assert info.value.__cause__ is not None


def test_module_exports() -> None:
    for name in codec.__all__:
        assert hasattr(codec, name), name


# --- property: arbitrary events round-trip ---------------------------------------------

text = st.text(max_size=40)
optional_text = st.none() | text
offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
# Keep a day away from datetime's limits so normalising to UTC cannot overflow.
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)

events = st.builds(
    PassPostback,
    event_id=text,
    origin=text,
    status_code=text,
    outcome=st.sampled_from(Outcome),
    code=optional_text,
    referenced_by=optional_text,
    reference_value=optional_text,
    custom_pass_id=optional_text,
    pass_data_id=optional_text,
    serial_number=optional_text,
    generated_at=st.none() | instants,
    timestamp_raw=optional_text,
    received_at=instants,
    extra=st.dictionaries(text, text, max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(event=events, schema_id=st.integers(min_value=0, max_value=2**32 - 1))
def test_property_round_trip(event: PassPostback, schema_id: int) -> None:
    data = encode(event)
    assert decode(data) == event
    assert data[:10] == b"\xc3\x01" + SCHEMA_FINGERPRINT
    confluent = encode_confluent(event, schema_id)
    assert decode(confluent, resolver=StaticResolver({schema_id: SCHEMA})) == event
    assert confluent[5:] == data[10:]
    # Stock fastavro agrees on every field.
    assert PassPostback.from_record(plain_fastavro_read(data[10:])) == event


# --- decode_columns: a batch field by field, the same values and errors as decode -----------


def assert_columns_match_decode(values: list[bytes], resolver: SchemaResolver | None = None) -> codec.DecodedColumns:
    """decode_columns agrees with decode on every record: the same values (as to_record gives them) for those
    decoded, the same DecodeError message for the others."""
    decoded = codec.decode_columns(values, resolver=resolver)
    assert list(decoded.fields) == list(codec.FIELD_NAMES)
    expected_rows, expected_errors = [], []
    for index, data in enumerate(values):
        try:
            expected_rows.append((index, decode(data, resolver=resolver).to_record()))
        except DecodeError as error:
            expected_errors.append((index, str(error)))
    assert [(index, str(error)) for index, error in decoded.errors] == expected_errors
    assert decoded.decoded == ([index for index, _ in expected_rows] if expected_errors else None)
    assert len(decoded) == len(expected_rows)
    for row, (_, record) in enumerate(expected_rows):
        assert {name: decoded.fields[name][row] for name in codec.FIELD_NAMES} == record
    return decoded


def stock_fastavro_record(data: bytes) -> dict[str, Any]:
    """What fastavro alone reads from the .avsc, timestamps as its datetimes turned back into microseconds."""
    record = plain_fastavro_read(data[10:])
    for name in ("generated_at", "received_at"):
        if record[name] is not None:
            record[name] = (record[name] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return record


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=30))
def test_decode_columns_agrees_with_decode_and_stock_fastavro(batch: list[PassPostback]) -> None:
    values = [encode(event) for event in batch]
    decoded = assert_columns_match_decode(values)
    for row, data in enumerate(values):
        assert {name: decoded.fields[name][row] for name in codec.FIELD_NAMES} == stock_fastavro_record(data)


def test_decode_columns_reads_every_kind_of_value() -> None:
    long_text = "x" * 64 + "é" * 100  # a length over 63 bytes takes more than one varint byte
    batch = [
        full_event(),
        minimal_event(),
        full_event(extra={}, generated_at=None, timestamp_raw=None),
        full_event(reference_value="zoë@exämple.com", custom_pass_id="票-№7-🎫", serial_number="a\x00b",
                   extra={"PASSDATA/ÉTIQUETTE": "valeur ✓", "": "", "X/Y/Z": "𝄞" * 100}),
        full_event(event_id=long_text, origin=long_text, extra={long_text: long_text}),
        full_event(origin="", status_code="", code="", extra={"": ""}),
        full_event(generated_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        full_event(generated_at=datetime(1, 1, 1, tzinfo=UTC)),
        full_event(received_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        full_event(received_at=datetime(1970, 1, 1, tzinfo=UTC)),
        full_event(outcome=Outcome.FAILURE), full_event(outcome=Outcome.UNKNOWN),
        full_event(extra={f"K/{i}": str(i) for i in range(300)}),
    ]
    values = [encode(event) for event in batch]
    decoded = assert_columns_match_decode(values * 3)
    assert decoded.fields["extra"][12] == {f"K/{i}": str(i) for i in range(300)}
    assert decoded.fields["received_at"][9] == 0 and decoded.fields["generated_at"][2] is None
    assert decoded.fields["outcome"][10:12] == ["FAILURE", "UNKNOWN"]


def body_of(record: dict[str, Any], *, extra_blocks: bytes | None = None) -> bytes:
    body = write_with(codec._without_logical_types(load_avsc()), record)
    if extra_blocks is not None:  # the map written by hand: replace fastavro's (its last bytes)
        assert record["extra"] == {} and body.endswith(b"\x00")
        body = body[:-1] + extra_blocks
    return b"\xc3\x01" + SCHEMA_FINGERPRINT + body


def test_decode_columns_reads_map_blocks_with_their_size_and_a_repeated_key() -> None:
    record = full_event(extra={}).to_record()
    # Two blocks: a negative count (-1) followed by the block's size in bytes, then a count of 2 whose second
    # entry repeats the first key (the last value wins, as fastavro has it).
    blocks = b"\x01\x0c\x04ab\x04cd" + b"\x04\x04ef\x04gh\x04ab\x04zz" + b"\x00"
    decoded = assert_columns_match_decode([body_of(record, extra_blocks=blocks)])
    assert decoded.fields["extra"] == [{"ab": "zz", "ef": "gh"}]


def test_decode_columns_gives_decode_s_errors_and_keeps_the_others_in_order() -> None:
    good = [encode(full_event(serial_number=f"S{n}")) for n in range(6)]
    micros_10000 = 253402300800 * 10**6  # year 10000: beyond what a datetime holds
    values = [
        good[0],
        b"",
        b"\x00bad",
        good[1],
        good[2][:-3],  # truncated
        good[3] + b"\x00",  # trailing byte
        b"\xc3\x01" + SCHEMA_FINGERPRINT + b"\x02a\x02b\x02c\x06",  # enum index out of range
        b"\xc3\x01" + SCHEMA_FINGERPRINT + b"\x02\xed\xa0\x80\x02b\x02c\x00" + bytes(20),  # a UTF-8 surrogate
        b"\xc3\x01" + SCHEMA_FINGERPRINT + b"\xff" * 30,  # a varint that never ends
        b"\xc3\x01" + SCHEMA_FINGERPRINT + b"\x01" * 40,  # a negative length
        body_of({**full_event().to_record(), "received_at": micros_10000}),
        body_of({**full_event().to_record(), "generated_at": -micros_10000}),
        b"\xc3\x01" + bytes(8) + good[4][10:],  # an unknown fingerprint
        good[4],
        encode_confluent(full_event(serial_number="C"), 3),  # no resolver knows id 3
        good[5],
    ]
    decoded = assert_columns_match_decode(values)
    assert decoded.decoded == [0, 3, 13, 15]
    assert decoded.fields["serial_number"] == ["S0", "S1", "S4", "S5"]


def test_decode_columns_reads_confluent_framing_and_other_writer_schemas() -> None:
    writer = evolved_writer_schema()
    record = {**full_event().to_record(), "channel": "api", "outcome": "PARTIAL"}
    evolved = b"\x00\x00\x00\x00\x09" + write_with(writer, record)
    registry = StaticResolver({5: SCHEMA, 9: writer})
    values = [encode_confluent(full_event(serial_number=f"S{n}"), 5) for n in range(5)]
    values[2:2] = [evolved, encode(full_event(serial_number="single object"))]
    decoded = assert_columns_match_decode(values, registry)
    assert decoded.fields["serial_number"] == ["S0", "S1", "SN-0001", "single object", "S2", "S3", "S4"]
    assert decoded.fields["outcome"][2] == "UNKNOWN"  # the writer's new symbol, read as our default
    # Without the registry, the Confluent records are decode's errors.
    assert [index for index, _ in assert_columns_match_decode(values).errors] == [0, 1, 2, 4, 5, 6]
