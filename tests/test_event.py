"""PassPostback, Outcome and classify: the event's Python face."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from importlib import resources

import pytest

from passpost.schemas.event import Outcome, PassPostback, classify

UTC = timezone.utc
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make(**overrides: object) -> PassPostback:
    fields: dict[str, object] = {
        "event_id": "evt-1",
        "origin": "GENERATE_PASS",
        "status_code": "N801",
        "received_at": RECEIVED,
    }
    fields.update(overrides)
    return PassPostback(**fields)  # type: ignore[arg-type]


def load_avsc() -> dict:
    text = resources.files("passpost.schemas").joinpath("pass_postback.avsc").read_text("utf-8")
    return json.loads(text)


# --- classify (docs/contract.md, "The vendor's postback") -------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("N801", Outcome.SUCCESS),
        ("N802", Outcome.FAILURE),
        ("N803", Outcome.FAILURE),
        ("N811", Outcome.FAILURE),
        ("E123", Outcome.FAILURE),
        ("e5", Outcome.FAILURE),
        ("E", Outcome.FAILURE),
        ("X999", Outcome.UNKNOWN),
        ("N804", Outcome.UNKNOWN),
        ("N8011", Outcome.UNKNOWN),
        ("", Outcome.UNKNOWN),
        ("   ", Outcome.UNKNOWN),
        (" n801 ", Outcome.SUCCESS),
        ("\tn811\n", Outcome.FAILURE),
        (" e42", Outcome.FAILURE),
    ],
)
def test_classify(code: str, expected: Outcome) -> None:
    assert classify(code) is expected


def test_outcome_is_a_str_enum_whose_values_are_the_avro_symbols() -> None:
    assert [o.value for o in Outcome] == ["SUCCESS", "FAILURE", "UNKNOWN"]
    assert Outcome.SUCCESS == "SUCCESS"
    outcome_type = next(f["type"] for f in load_avsc()["fields"] if f["name"] == "outcome")
    assert outcome_type["symbols"] == [o.value for o in Outcome]


# --- the dataclass matches the schema -----------------------------------------


def test_fields_mirror_the_avro_schema_in_order() -> None:
    avsc_names = [f["name"] for f in load_avsc()["fields"]]
    assert [f.name for f in dataclasses.fields(PassPostback)] == avsc_names


def test_defaults_mirror_the_avro_schema() -> None:
    event = make()
    assert event.outcome is Outcome.UNKNOWN
    for name in (
        "code",
        "referenced_by",
        "reference_value",
        "custom_pass_id",
        "pass_data_id",
        "serial_number",
        "generated_at",
        "timestamp_raw",
    ):
        assert getattr(event, name) is None, name
    assert event.extra == {}
    # A fresh dict per event, not one shared mutable default.
    assert make().extra is not event.extra


def test_frozen_slotted_keyword_only() -> None:
    event = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.origin = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    with pytest.raises(TypeError):
        PassPostback("evt-1", "GENERATE_PASS", "N801")  # type: ignore[misc]


def test_naive_datetimes_are_refused() -> None:
    # fastavro would read a naive datetime as host-local time and shift it.
    with pytest.raises(ValueError, match="received_at"):
        make(received_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="generated_at"):
        make(generated_at=datetime(2024, 1, 1))


def test_aware_datetimes_are_normalised_to_utc() -> None:
    est = timezone(timedelta(hours=-5))
    event = make(
        generated_at=datetime(2013, 11, 26, 11, 37, 11, 5, tzinfo=est),
        received_at=datetime(2013, 11, 26, 11, 37, 12, tzinfo=est),
    )
    assert event.generated_at == datetime(2013, 11, 26, 16, 37, 11, 5, tzinfo=UTC)
    assert event.generated_at.tzinfo is UTC
    assert event.received_at.tzinfo is UTC
    assert event.received_at.hour == 16


def test_outcome_given_as_symbol_is_coerced() -> None:
    assert make(outcome="FAILURE").outcome is Outcome.FAILURE  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make(outcome="MAYBE")  # type: ignore[arg-type]


# --- kafka_key (docs/contract.md, "The events") --------------------------------------------------


def test_kafka_key_prefers_serial_number() -> None:
    event = make(serial_number="SN", pass_data_id="PD", custom_pass_id="CP")
    assert event.kafka_key() == b"SN"


def test_kafka_key_falls_back_to_pass_data_id() -> None:
    assert make(pass_data_id="PD", custom_pass_id="CP").kafka_key() == b"PD"


def test_kafka_key_falls_back_to_custom_pass_id() -> None:
    assert make(custom_pass_id="CP").kafka_key() == b"CP"


def test_kafka_key_falls_back_to_event_id() -> None:
    assert make().kafka_key() == b"evt-1"


def test_kafka_key_treats_empty_strings_as_absent() -> None:
    event = make(serial_number="", pass_data_id="", custom_pass_id="CP")
    assert event.kafka_key() == b"CP"


def test_kafka_key_is_utf8() -> None:
    assert make(serial_number="pässé-№1").kafka_key() == "pässé-№1".encode("utf-8")


# --- to_record / from_record ---------------------------------------------------------


def full_event() -> PassPostback:
    return make(
        outcome=Outcome.SUCCESS,
        code="C1",
        referenced_by="Email",
        reference_value="someone@example.com",
        custom_pass_id="CP",
        pass_data_id="PD",
        serial_number="SN",
        generated_at=datetime(2013, 11, 26, 16, 37, 11, 654321, tzinfo=UTC),
        timestamp_raw="2013-11-26T11:37:11-05:00",
        extra={"PASSDATA/BARCODEVALUE": "123", "PASSDATA/HEADERLABEL1": "Gate"},
    )


def test_to_record_is_plain_avro_data() -> None:
    record = full_event().to_record()
    assert record["outcome"] == "SUCCESS"
    assert type(record["outcome"]) is str
    # Epoch microseconds, exact.
    assert record["generated_at"] == 1385483831654321
    assert record["received_at"] == (RECEIVED - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    assert list(record) == [f.name for f in dataclasses.fields(PassPostback)]


def test_record_round_trip() -> None:
    event = full_event()
    assert PassPostback.from_record(event.to_record()) == event
    minimal = make()
    assert PassPostback.from_record(minimal.to_record()) == minimal


def test_from_record_accepts_datetimes_as_fastavro_returns_them() -> None:
    event = full_event()
    record = event.to_record()
    record["generated_at"] = event.generated_at
    record["received_at"] = event.received_at
    assert PassPostback.from_record(record) == event


def test_from_record_fills_schema_defaults_and_maps_unknown_symbols() -> None:
    record = {
        "event_id": "e",
        "origin": "o",
        "status_code": "s",
        "outcome": "SOMETHING_NEW",
        "received_at": 0,
    }
    event = PassPostback.from_record(record)
    assert event.outcome is Outcome.UNKNOWN
    assert event.extra == {}
    assert event.received_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_personal_data_is_not_in_the_repr() -> None:
    event = PassPostback(event_id="e", origin="o", status_code="N801", reference_value="someone@example.com",
                         received_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert "someone@example.com" not in repr(event)
