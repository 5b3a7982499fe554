"""The pass postback event: the Python face of `pass_postback.avsc`.

Field names, order and types mirror the Avro schema one to one so that the
record dict handed to fastavro needs no renaming.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["Outcome", "PassPostback", "classify"]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # Avro's timestamp-micros count from it
_ONE_MICROSECOND = timedelta(microseconds=1)


class Outcome(str, enum.Enum):
    """Avro enum `passpost.Outcome`; the values are the Avro symbols."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    UNKNOWN = "UNKNOWN"


# Vendor Appendix D. Kept as data so a newly documented code is a one-line change.
_SUCCESS_CODES = frozenset({"N801"})
_FAILURE_CODES = frozenset({"N802", "N803", "N811"})


def classify(status_code: str) -> Outcome:
    """Map a Skycore status code to an outcome (docs/contract.md, "The vendor's postback")."""
    code = status_code.strip().upper()
    if code in _SUCCESS_CODES:
        return Outcome.SUCCESS
    if code in _FAILURE_CODES or code.startswith("E"):
        return Outcome.FAILURE
    return Outcome.UNKNOWN


def _as_utc(name: str, value: datetime) -> datetime:
    # fastavro reads a naive datetime as *local* time, which would silently shift
    # events by the host's offset; refuse it here rather than on the wire.
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value!r}")
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def _to_micros(value: datetime) -> int:
    # Exact integer arithmetic: going through float timestamps loses microseconds
    # for dates far from the epoch.
    return (value - EPOCH) // _ONE_MICROSECOND


@dataclass(frozen=True, slots=True, kw_only=True)
class PassPostback:
    """One postback item. Keyword-only: fourteen positional fields invite mix-ups.

    Datetimes must be timezone-aware and are normalised to UTC on construction.
    """

    event_id: str
    origin: str
    status_code: str
    outcome: Outcome = Outcome.UNKNOWN
    code: str | None = None
    referenced_by: str | None = None
    # Personal data (an email address or phone number): kept out of repr so it never
    # reaches a log line by way of an f-string or a traceback.
    reference_value: str | None = field(default=None, repr=False)
    custom_pass_id: str | None = None
    pass_data_id: str | None = None
    serial_number: str | None = None
    generated_at: datetime | None = None
    timestamp_raw: str | None = None
    received_at: datetime
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # object.__setattr__ is the sanctioned way to normalise a frozen dataclass;
        # each is guarded so the common, already-normal case costs only the checks
        # (decode builds one of these per message at consumer rates).
        if type(self.outcome) is not Outcome:
            object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.received_at.tzinfo is not UTC:
            object.__setattr__(self, "received_at", _as_utc("received_at", self.received_at))
        generated_at = self.generated_at
        if generated_at is not None and generated_at.tzinfo is not UTC:
            object.__setattr__(self, "generated_at", _as_utc("generated_at", generated_at))

    def kafka_key(self) -> bytes:
        """Partition key: the most specific pass identifier present (docs/contract.md, "The events").

        Keying by pass keeps every postback about one pass in one partition, so
        consumers see them in order. Empty strings count as absent.
        """
        key = (
            self.serial_number
            or self.pass_data_id
            or self.custom_pass_id
            or self.event_id
        )
        return key.encode("utf-8")

    def to_record(self) -> dict[str, Any]:
        """The dict fastavro writes with the `passpost.PassPostback` schema."""
        generated_at = self.generated_at
        return {
            "event_id": self.event_id,
            "origin": self.origin,
            "status_code": self.status_code,
            "outcome": self.outcome.value,
            "code": self.code,
            "referenced_by": self.referenced_by,
            "reference_value": self.reference_value,
            "custom_pass_id": self.custom_pass_id,
            "pass_data_id": self.pass_data_id,
            "serial_number": self.serial_number,
            # Pre-converted ints skip fastavro's datetime handling, which
            # treats naive values as local time.
            "generated_at": None if generated_at is None else _to_micros(generated_at),
            "timestamp_raw": self.timestamp_raw,
            "received_at": _to_micros(self.received_at),
            "extra": self.extra,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PassPostback:
        """Build an event from a dict as fastavro reads it.

        Timestamps may be datetimes (fastavro's logical types) or raw epoch
        microseconds; fields the record lacks take the schema's defaults.
        """
        generated_at = record.get("generated_at")
        return cls(
            event_id=record["event_id"],
            origin=record["origin"],
            status_code=record["status_code"],
            outcome=_OUTCOME_BY_SYMBOL.get(record.get("outcome"), Outcome.UNKNOWN),
            code=record.get("code"),
            referenced_by=record.get("referenced_by"),
            reference_value=record.get("reference_value"),
            custom_pass_id=record.get("custom_pass_id"),
            pass_data_id=record.get("pass_data_id"),
            serial_number=record.get("serial_number"),
            generated_at=None if generated_at is None else _from_wire(generated_at),
            timestamp_raw=record.get("timestamp_raw"),
            received_at=_from_wire(record["received_at"]),
            extra=record.get("extra") or {},
        )


# Mirrors the Avro enum default: a symbol this reader does not know is UNKNOWN.
_OUTCOME_BY_SYMBOL: dict[Any, Outcome] = {o.value: o for o in Outcome}


def _from_wire(value: datetime | int) -> datetime:
    # The codec reads timestamps as plain longs (fastavro's logical-type
    # conversion costs more than this); a datetime arrives when a caller read
    # the record with logical types on.
    if type(value) is int:
        return EPOCH + timedelta(0, 0, value)
    return value  # type: ignore[return-value]
