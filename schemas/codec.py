"""Avro codec for `passpost.PassPostback` events on Kafka (docs/contract.md, "The events").

Two framings share one binary body:

* Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's parsing canonical form + binary.
* Confluent wire format: ``00`` + 4-byte big-endian schema-registry id + binary.

Decoding always *reads* into this module's schema; the writer schema is found
by fingerprint or id through a `SchemaResolver`, so events written by an older
or newer compatible schema decode through Avro schema resolution.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from io import BytesIO
from typing import Any, Final, Protocol, TypeAlias

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from .binary import WRITTEN_FIELDS, columns_reader, fields_of, write_body
from .event import PassPostback

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_RESOLVER",
    "SCHEMA",
    "SCHEMA_FINGERPRINT",
    "SINGLE_OBJECT_MAGIC",
    "FIELD_NAMES",
    "DecodeError",
    "DecodedColumns",
    "SchemaResolver",
    "StaticResolver",
    "crc64_avro",
    "decode",
    "decode_columns",
    "encode",
    "encode_confluent",
    "parse_writer_schema",
    "schema_fingerprint",
]

#: A schema as fastavro returns it from `fastavro.parse_schema`.
ParsedSchema: TypeAlias = Any

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
_SINGLE_OBJECT_HEADER_LEN: Final = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER_LEN: Final = len(CONFLUENT_MAGIC) + 4
_MAX_SCHEMA_ID: Final = 2**32 - 1


# --- CRC-64-AVRO (Avro spec, "Schema Fingerprints") -------------------------
# Implemented here rather than borrowed from fastavro so the wire contract does
# not hinge on a private helper, and so the test can cross-check the two.

_CRC64_EMPTY: Final = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE: Final = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (Rabin) fingerprint of `data` as an unsigned 64-bit int."""
    fp = _CRC64_EMPTY
    table = _CRC64_TABLE
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def schema_fingerprint(schema: Any) -> bytes:
    """The 8 fingerprint bytes single-object encoding puts on the wire.

    Little-endian, as the Avro spec's single-object encoding and the Java
    implementation write them.
    """
    canonical = to_parsing_canonical_form(schema)
    return crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")


# --- our schema, parsed once --------------------------------------------------


# ``pass_postback.avsc`` exactly as kept in the repository (what a schema registry is given), read
# once. importlib.resources finds it from the source tree, an editable install or a wheel.
SCHEMA_TEXT: Final = resources.files(__package__).joinpath("pass_postback.avsc").read_text("utf-8")


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    return schema


_AVSC: Final = json.loads(SCHEMA_TEXT)
SCHEMA: Final[ParsedSchema] = fastavro.parse_schema(_AVSC)
SCHEMA_FINGERPRINT: Final[bytes] = schema_fingerprint(SCHEMA)
# Same bytes on the wire (logical types only annotate a long), but fastavro's
# per-field logical-type dispatch roughly doubles the cost of a timestamp, so
# our own reads and writes go through plain longs and PassPostback converts.
_WIRE_SCHEMA: Final[ParsedSchema] = fastavro.parse_schema(_without_logical_types(_AVSC))
_SINGLE_OBJECT_HEADER: Final = SINGLE_OBJECT_MAGIC + SCHEMA_FINGERPRINT

if fields_of(_AVSC) != WRITTEN_FIELDS:  # encode's writer is made for the schema: they change together
    raise RuntimeError("pass_postback.avsc no longer has the fields schemas/binary.py writes: update write_body")
if tuple(field.name for field in dataclasses.fields(PassPostback)) != tuple(f["name"] for f in _AVSC["fields"]):
    raise RuntimeError("pass_postback.avsc and PassPostback (schemas/event.py) no longer name the same fields")


# --- writer-schema lookup: the seam for a schema registry --------------------


class SchemaResolver(Protocol):
    """Finds the schema an event was written with.

    A schema-registry client plugs in here; it should cache, because `decode`
    asks once per message.
    """

    def by_fingerprint(self, fp: bytes) -> ParsedSchema | None:
        """Writer schema for an 8-byte single-object fingerprint, or None."""
        ...

    def by_id(self, schema_id: int) -> ParsedSchema | None:
        """Writer schema for a Confluent schema-registry id, or None."""
        ...


def _parse(schema: Any) -> ParsedSchema:
    # Registries hand schemas over as JSON text; fastavro would take a bare
    # string for a type name instead.
    if isinstance(schema, (str, bytes)):
        schema = json.loads(schema)
    parsed = fastavro.parse_schema(schema)
    # Same canonical form as ours: reuse our object so decode can skip
    # schema resolution entirely (it keys that on identity).
    return SCHEMA if schema_fingerprint(parsed) == SCHEMA_FINGERPRINT else parsed


def parse_writer_schema(schema: Any) -> ParsedSchema:
    """A writer schema as a resolver hands it to `decode`: JSON text (as registries serve it), a dict
    or a parsed schema; our own schema's canonical form comes back as `SCHEMA` (the fast path)."""
    return _parse(schema)


class StaticResolver:
    """Resolver over fixed schemas: our own, plus any given.

    ``StaticResolver({42: schema})`` knows Confluent id 42; every schema given
    (by id or in `schemas`) is also known by its fingerprint. Schemas may be
    dicts, parsed schemas or JSON text.
    """

    __slots__ = ("_by_fingerprint", "_by_id")

    def __init__(
        self,
        ids: Mapping[int, Any] | None = None,
        *,
        schemas: Iterable[Any] = (),
    ) -> None:
        self._by_id: dict[int, ParsedSchema] = {
            schema_id: _parse(schema) for schema_id, schema in (ids or {}).items()
        }
        known = [SCHEMA, *self._by_id.values(), *(_parse(s) for s in schemas)]
        self._by_fingerprint: dict[bytes, ParsedSchema] = {
            schema_fingerprint(s): s for s in known
        }

    def by_fingerprint(self, fp: bytes) -> ParsedSchema | None:
        return self._by_fingerprint.get(fp)

    def by_id(self, schema_id: int) -> ParsedSchema | None:
        return self._by_id.get(schema_id)


DEFAULT_RESOLVER: Final = StaticResolver()


# --- encode / decode ------------------------------------------------------------


class DecodeError(ValueError):
    """The bytes are not a decodable `passpost.PassPostback` event."""


def encode(event: PassPostback) -> bytes:
    """Avro single-object encoding of `event` (the default Kafka value).

    A field of the wrong type (e.g. None in event_id) raises AttributeError or
    TypeError: that is a bug in the caller, not bad input.
    """
    return _SINGLE_OBJECT_HEADER + write_body(event)


def encode_confluent(event: PassPostback, schema_id: int) -> bytes:
    """Confluent wire format of `event`, for when a schema registry assigned `schema_id`."""
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise ValueError(f"schema id must fit in 4 unsigned bytes, got {schema_id}")
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + write_body(event)


def decode(data: bytes, *, resolver: SchemaResolver | None = None) -> PassPostback:
    """Decode either framing into a `PassPostback`.

    Raises DecodeError when the data is too short, has an unknown magic, names
    a schema the resolver does not know, or its binary does not decode.
    """
    size = len(data)
    if size < 1:
        raise DecodeError(
            "empty message: expected Avro single-object (C3 01) or Confluent (00) framing"
        )

    if data[0] == 0xC3:
        if size < 2 or data[1] != 0x01:
            raise DecodeError(f"unknown magic {bytes(data[:2]).hex(' ')}: expected C3 01 or 00")
        if size < _SINGLE_OBJECT_HEADER_LEN:
            raise DecodeError(
                f"message too short: {size} bytes, a single-object header alone is "
                f"{_SINGLE_OBJECT_HEADER_LEN}"
            )
        fp = bytes(data[2:_SINGLE_OBJECT_HEADER_LEN])
        # Our own fingerprint always means our schema; the lookup is the hot path.
        if fp == SCHEMA_FINGERPRINT:
            writer = SCHEMA
        else:
            writer = (resolver or DEFAULT_RESOLVER).by_fingerprint(fp)
            if writer is None:
                raise DecodeError(
                    f"unknown writer schema fingerprint {fp.hex()} (CRC-64-AVRO, little-endian); "
                    f"this decoder's schema is {SCHEMA_FINGERPRINT.hex()}"
                )
        offset = _SINGLE_OBJECT_HEADER_LEN
    elif data[0] == 0x00:
        if size < _CONFLUENT_HEADER_LEN:
            raise DecodeError(
                f"message too short: {size} bytes, a Confluent header alone is "
                f"{_CONFLUENT_HEADER_LEN}"
            )
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
        writer = (resolver or DEFAULT_RESOLVER).by_id(schema_id)
        if writer is None:
            raise DecodeError(
                f"unknown Confluent schema id {schema_id}: the resolver has no schema for it "
                "(is the schema registry configured?)"
            )
        offset = _CONFLUENT_HEADER_LEN
    else:
        raise DecodeError(f"unknown magic {bytes(data[:2]).hex(' ')}: expected C3 01 or 00")

    # BytesIO over bytes shares the buffer until written to, so seeking past the
    # header avoids copying the body the way slicing would.
    body = BytesIO(data)
    body.seek(offset)
    try:
        if writer is SCHEMA:
            record = fastavro.schemaless_reader(body, _WIRE_SCHEMA)
        else:
            # A foreign writer schema: let Avro schema resolution map it onto ours.
            record = fastavro.schemaless_reader(body, writer, SCHEMA)
        event = PassPostback.from_record(record)  # type: ignore[arg-type]
    except SchemaResolutionError as exc:
        raise DecodeError(
            f"writer schema cannot be read as passpost.PassPostback (incompatible change?): {exc}"
        ) from exc
    except Exception as exc:  # fastavro raises anything from EOFError to IndexError
        raise DecodeError(f"corrupt Avro body for passpost.PassPostback: {exc!r}") from exc
    if body.tell() != size:
        # A Kafka value holds exactly one record; leftovers mean a framing bug.
        raise DecodeError(
            f"corrupt Avro body for passpost.PassPostback: {size - body.tell()} "
            "trailing bytes after the record"
        )
    return event


# --- decoding a batch field by field ----------------------------------------------------
#
# A sink that stores events as columns (the analytics table) does not need a PassPostback
# per event: fastavro's record dict and the dataclass cost the consumer's event loop about
# two thirds of its time (py-spy, BENCHMARKS.md). `decode_columns` reads our own schema's
# binary straight into one list per field with code generated from the .avsc at import
# (schemas/binary.py: straight-line, no per-field dispatch); any record it does not read on that path (another
# framing or writer schema, a multi-byte length, anything irregular) goes through `decode`,
# so what is accepted, and every DecodeError, is exactly `decode`'s.


_READ_COLUMNS: Final = columns_reader(_AVSC, _CONFLUENT_HEADER_LEN)
#: The event's fields in schema order: the keys of `DecodedColumns.fields`.
FIELD_NAMES: Final[tuple[str, ...]] = tuple(field["name"] for field in _AVSC["fields"])


class DecodedColumns:
    """Records decoded field by field.

    ``fields[name][i]`` is the value of field ``name`` of the ``i``-th record decoded, as
    `PassPostback.to_record` gives it (the Avro wire's values: timestamps as integer
    microseconds since the epoch, UTC; the enum as its symbol; the map as a dict).
    ``decoded`` lists the positions in the input of the records decoded (None: all of them,
    in order), ``errors`` the others with `decode`'s error.
    """

    __slots__ = ("decoded", "errors", "fields")

    def __init__(self, fields: dict[str, list[Any]], decoded: list[int] | None,
                 errors: list[tuple[int, DecodeError]]) -> None:
        self.fields = fields
        self.decoded = decoded
        self.errors = errors

    def __len__(self) -> int:
        return len(self.fields[FIELD_NAMES[0]])


def decode_columns(values: Sequence[bytes], *, resolver: SchemaResolver | None = None) -> DecodedColumns:
    """Decode a batch of either framing into one list per field (`DecodedColumns`): the same values, and the
    same DecodeErrors, as `decode` of each, without a PassPostback (or a dict) per record."""
    columns: list[list[Any]] = [[] for _ in FIELD_NAMES]
    irregular: list[int] = []
    confluent: set[bytes] = set()  # Confluent headers whose schema id names our schema
    resolver = resolver or DEFAULT_RESOLVER

    def fallback(index: int) -> None:
        irregular.append(index)
        data = values[index]
        # The first record of a batch with a registry id of our schema teaches the reader its header.
        if data[:1] == CONFLUENT_MAGIC and len(data) >= _CONFLUENT_HEADER_LEN:
            header = bytes(data[:_CONFLUENT_HEADER_LEN])
            if header not in confluent and resolver.by_id(int.from_bytes(header[1:], "big")) is SCHEMA:
                confluent.add(header)

    _READ_COLUMNS(values, _SINGLE_OBJECT_HEADER, confluent, columns, fallback)
    if not irregular:
        return DecodedColumns(dict(zip(FIELD_NAMES, columns, strict=True)), None, [])
    # The records `decode` reads (other framings or writer schemas, anything irregular), put back in place.
    slow: dict[int, dict[str, Any]] = {}
    errors: list[tuple[int, DecodeError]] = []
    for index in irregular:
        try:
            slow[index] = decode(values[index], resolver=resolver).to_record()
        except DecodeError as error:
            errors.append((index, error))
    fields: dict[str, list[Any]] = {}
    for name, fast in zip(FIELD_NAMES, columns, strict=True):
        merged: list[Any] = []
        previous = taken = 0
        for index in irregular:
            merged += fast[taken:taken + index - previous]
            taken += index - previous
            if index in slow:
                merged.append(slow[index][name])
            previous = index + 1
        merged += fast[taken:]
        fields[name] = merged
    failed = {index for index, _ in errors}
    decoded = [index for index in range(len(values)) if index not in failed] if failed else None
    return DecodedColumns(fields, decoded, errors)
