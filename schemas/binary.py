"""The Avro binary body of a `passpost.PassPostback`, written and read by code made for this schema.

Framing (single-object, Confluent), schema resolution and the public ``encode``, ``decode``
and ``decode_columns`` are `codec`'s; this module is only the body.

**Writing** (``write_body``, the ingress's every event):

fastavro's generic writer walks the parsed schema for every record: a union is matched
by comparing type names, every value is validated against its branch, and the record
first becomes a dict: for our fixed schema, the largest single piece of the ingress's own
work. Written field by field below, it costs half as much (BENCHMARKS.md, issue 13).
The bytes are the same as fastavro's (tests/test_binary.py
compares them over generated events), and `codec` refuses at import a `pass_postback.avsc`
whose fields (``fields_of``) are not the ``WRITTEN_FIELDS``, so the schema cannot change
without this writer changing with it.

Avro binary, as used here (Avro specification, "Binary Encoding"): a long is its zig-zag
value in little-endian base-128 groups; a string is its UTF-8 length as a long, then the
bytes; an enum is the symbol's index as a long; a union is the branch's index as a long,
then the value; a map is blocks of (count, key, value...) ended by a count of 0.
"""

from __future__ import annotations

from typing import Any, Final

from .event import PassPostback, _to_micros

__all__ = ["WRITTEN_FIELDS", "columns_reader", "fields_of", "write_body"]


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


# --- reading a batch into columns -------------------------------------------------------
#
# **Reading** (``columns_reader``, the analytics consumer's every event): the body read
# straight into one list per field, by a function generated from the .avsc at import
# (straight-line code, no per-field dispatch). Anything irregular raises ``_IRREGULAR``,
# and `codec.decode_columns` hands that record to `codec.decode`, so what is accepted, and
# every error, is exactly `decode`'s.


class _Irregular(Exception):
    """Not for the generated reader: the record goes through `decode`."""


_IRREGULAR: Final = _Irregular()
# datetime's range: `decode` refuses a timestamp a datetime cannot hold, so the columns do too.
_MIN_MICROS: Final = -62135596800 * 10**6
_MAX_MICROS: Final = 253402300800 * 10**6 - 1


def _read_long(data: bytes, p: int) -> tuple[int, int]:
    """A zigzag varint at ``p``: (value, position after it); at most 9 bytes (63 bits), else irregular."""
    b = data[p]
    p += 1
    value = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        shift += 7
    if shift > 63:
        raise _IRREGULAR
    return (value >> 1) ^ -(value & 1), p


def _read_string(data: bytes, p: int) -> tuple[str, int]:
    size, p = _read_long(data, p)
    end = p + size
    if size < 0 or end > len(data):
        raise _IRREGULAR
    return data[p:end].decode(), end


def _read_string_map(data: bytes, p: int) -> tuple[dict[str, str], int]:
    result: dict[str, str] = {}
    while True:
        count, p = _read_long(data, p)
        if count == 0:
            return result, p
        if count < 0:  # a block that also gives its size in bytes
            count = -count
            _, p = _read_long(data, p)
        for _ in range(count):
            key, p = _read_string(data, p)
            result[key], p = _read_string(data, p)


def _string_code(target: str, indent: str) -> list[str]:
    # Lengths under 64 bytes take one varint byte: the common case, inline.
    return [f"{indent}z = data[p]",
            f"{indent}if z < 128 and not z & 1:",
            f"{indent}    e = p + 1 + (z >> 1)",
            f"{indent}    {target} = data[p + 1:e].decode()",
            f"{indent}    p = e",
            f"{indent}else:",
            f"{indent}    {target}, p = _read_string(data, p)"]


def _long_code(target: str, indent: str, timestamp: bool) -> list[str]:
    lines = [f"{indent}b = data[p]",
             f"{indent}p += 1",
             f"{indent}v = b & 127",
             f"{indent}s = 7",
             f"{indent}while b & 128:",
             f"{indent}    b = data[p]",
             f"{indent}    p += 1",
             f"{indent}    v |= (b & 127) << s",
             f"{indent}    s += 7",
             f"{indent}if s > 63:",
             f"{indent}    raise _IRREGULAR",
             f"{indent}{target} = (v >> 1) ^ -(v & 1)"]
    if timestamp:
        lines += [f"{indent}if not _MIN_MICROS <= {target} <= _MAX_MICROS:",
                  f"{indent}    raise _IRREGULAR"]
    return lines


def _value_code(schema: Any, target: str, indent: str, constants: dict[str, Any]) -> list[str]:
    """Code reading one value of Avro type ``schema`` at ``p`` of ``data`` into ``target``."""
    if isinstance(schema, list):  # a union: the branch's index, then its value
        lines = [f"{indent}z = data[p]", f"{indent}p += 1"]
        for index, branch in enumerate(schema):
            lines.append(f"{indent}{'if' if index == 0 else 'elif'} z == {2 * index}:")
            lines += (_value_code(branch, target, indent + "    ", constants) if branch != "null"
                      else [f"{indent}    {target} = None"])
        return lines + [f"{indent}else:", f"{indent}    raise _IRREGULAR"]
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "string":
        return _string_code(target, indent)
    if kind == "long":
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical not in (None, "timestamp-micros"):
            raise TypeError(f"no column reader for logical type {logical!r}")
        return _long_code(target, indent, logical == "timestamp-micros")
    if kind == "enum":
        name = f"_SYMBOLS_{len(constants)}"
        constants[name] = tuple(schema["symbols"])
        # Avro writes the index zigzagged; an index out of range is irregular (decode says why).
        return [f"{indent}z = data[p]", f"{indent}p += 1", f"{indent}if z & 1 or z > 127:",
                f"{indent}    raise _IRREGULAR", f"{indent}{target} = {name}[z >> 1]"]
    if kind == "map" and schema["values"] == "string":
        return [f"{indent}if data[p] == 0:", f"{indent}    {target} = {{}}", f"{indent}    p += 1",
                f"{indent}else:", f"{indent}    {target}, p = _read_string_map(data, p)"]
    raise TypeError(f"no column reader for Avro type {schema!r}")


def _columns_reader_source(avsc: Any, confluent_header_len: int, constants: dict[str, Any]) -> str:
    """Source of ``read(values, header, confluent, columns, fallback)``: each value framed with ``header`` (our
    single-object header) or a Confluent header (``confluent_header_len`` bytes) in ``confluent`` (those whose
    id names our schema) read into ``columns`` (one list per field, in order); the index of any other, or of one
    not read to its end, passed to ``fallback`` (which may add to ``confluent``)."""
    fields = avsc["fields"]
    names = [f"v{n}" for n in range(len(fields))]
    lines = ["def read(values, header, confluent, columns, fallback):",
             f"    {', '.join(f'a{n}' for n in range(len(fields)))}, = [column.append for column in columns]",
             "    start = len(header)",
             "    for index, data in enumerate(values):",
             "        if data.startswith(header):",
             "            p = start",
             f"        elif data[:{confluent_header_len}] in confluent:",
             f"            p = {confluent_header_len}",
             "        else:",
             "            fallback(index)",
             "            continue",
             "        try:"]
    for field, target in zip(fields, names, strict=True):
        lines += _value_code(field["type"], target, "            ", constants)
    lines += ["            if p != len(data):",
              "                raise _IRREGULAR",
              "        except Exception:",  # IndexError, UnicodeDecodeError, _Irregular: decode says which
              "            fallback(index)",
              "            continue",
              *(f"        a{n}({target})" for n, target in enumerate(names))]
    return "\n".join(lines) + "\n"


def columns_reader(avsc: Any, confluent_header_len: int) -> Any:
    """The generated ``read`` (see ``_columns_reader_source``) for the record schema ``avsc`` (JSON)."""
    constants: dict[str, Any] = {}
    source = _columns_reader_source(avsc, confluent_header_len, constants)
    namespace: dict[str, Any] = {"_IRREGULAR": _IRREGULAR, "_MIN_MICROS": _MIN_MICROS, "_MAX_MICROS": _MAX_MICROS,
                                 "_read_string": _read_string, "_read_string_map": _read_string_map, **constants}
    exec(compile(source, f"<columns reader of {avsc['namespace']}.{avsc['name']}>", "exec"), namespace)
    return namespace["read"]
