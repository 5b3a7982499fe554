"""The Avro binary body of a `passpost.PassPostback`, written by code made for this schema.

fastavro's generic writer walks the parsed schema for every record: a union is matched
by comparing type names, every value is validated against its branch, and the record
first becomes a dict. For our fixed schema that costs about 9 µs an event, the largest
single piece of the ingress's own work (BENCHMARKS.md, issue 13). Written field by field
below it costs about 3 µs. The bytes are the same as fastavro's (tests/test_codec.py
compares them over generated events), and ``_check_schema`` refuses at import a
`pass_postback.avsc` whose fields no longer match what this writer writes, so the schema
cannot change without this module changing with it.

Avro binary, as used here (Avro specification, "Binary Encoding"): a long is its zig-zag
value in little-endian base-128 groups; a string is its UTF-8 length as a long, then the
bytes; an enum is the symbol's index as a long; a union is the branch's index as a long,
then the value; a map is blocks of (count, key, value...) ended by a count of 0.
"""

from __future__ import annotations

from typing import Any, Final

from .event import PassPostback, _to_micros

__all__ = ["write_body"]


def _long(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


# Lengths of short strings, looked up instead of computed: almost every string is short.
_SHORT: Final = 4096
_LENGTHS: Final = tuple(_long(n) for n in range(_SHORT))


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    size = len(data)
    return (_LENGTHS[size] if size < _SHORT else _long(size)) + data


# ["null", X]: branch 0 is null (zig-zag 0), branch 1 is X (zig-zag 2).
_NULL: Final = b"\x00"
_PRESENT: Final = b"\x02"
_OUTCOME_INDEX: Final = {"SUCCESS": b"\x00", "FAILURE": b"\x02", "UNKNOWN": b"\x04"}
_EMPTY_MAP: Final = b"\x00"


def _optional_string(value: str | None) -> bytes:
    return _NULL if value is None else _PRESENT + _string(value)


def write_body(event: PassPostback) -> bytes:
    """The Avro binary of ``event`` with the `passpost.PassPostback` schema (no framing)."""
    generated_at = event.generated_at
    extra = event.extra
    parts = [
        _string(event.event_id),
        _string(event.origin),
        _string(event.status_code),
        _OUTCOME_INDEX[event.outcome.value],
        _optional_string(event.code),
        _optional_string(event.referenced_by),
        _optional_string(event.reference_value),
        _optional_string(event.custom_pass_id),
        _optional_string(event.pass_data_id),
        _optional_string(event.serial_number),
        _NULL if generated_at is None else _PRESENT + _long(_to_micros(generated_at)),
        _optional_string(event.timestamp_raw),
        _long(_to_micros(event.received_at)),
    ]
    if extra:
        parts.append(_long(len(extra)))
        for key, value in extra.items():
            parts.append(_string(key))
            parts.append(_string(value))
    parts.append(_EMPTY_MAP)
    return b"".join(parts)


# What write_body writes, in order: (field name, Avro type as the .avsc spells it, logical types dropped).
WRITTEN_FIELDS: Final[tuple[tuple[str, Any], ...]] = (
    ("event_id", "string"),
    ("origin", "string"),
    ("status_code", "string"),
    ("outcome", {"type": "enum", "name": "Outcome", "symbols": ["SUCCESS", "FAILURE", "UNKNOWN"]}),
    ("code", ["null", "string"]),
    ("referenced_by", ["null", "string"]),
    ("reference_value", ["null", "string"]),
    ("custom_pass_id", ["null", "string"]),
    ("pass_data_id", ["null", "string"]),
    ("serial_number", ["null", "string"]),
    ("generated_at", ["null", "long"]),
    ("timestamp_raw", ["null", "string"]),
    ("received_at", "long"),
    ("extra", {"type": "map", "values": "string"}),
)


def fields_of(avsc: Any) -> tuple[tuple[str, Any], ...]:
    """``(name, type)`` of each field of the schema as JSON, without what does not change the
    binary (docs, defaults, logical types annotating a long)."""

    def essential(schema: Any) -> Any:
        if isinstance(schema, list):
            return [essential(branch) for branch in schema]
        if isinstance(schema, dict):
            if schema.get("type") == "enum":
                return {"type": "enum", "name": schema["name"], "symbols": schema["symbols"]}
            if schema.get("type") == "map":
                return {"type": "map", "values": essential(schema["values"])}
            if schema.get("logicalType") is not None and set(schema) <= {"type", "logicalType"}:
                return schema["type"]
        return schema

    return tuple((field["name"], essential(field["type"])) for field in avsc["fields"])
