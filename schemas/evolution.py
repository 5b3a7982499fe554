"""Is ``pass_postback.avsc`` still FULL_TRANSITIVE-compatible with every version ever released?

Every released version is kept in ``schemas/history/pass_postback.vN.avsc``. For each one,
records are written with one schema and read with the other through fastavro's schema
resolution, both ways: the current schema must read old events (backward: consumers
replay the topic from its start) and old schemas must read new events (forward: consumers
not yet upgraded). Two records each way: one taking every optional branch, one taking the
null branches, so a union or enum change shows up whichever branch the data uses.

This is what runs without a registry; ``passpost schema check`` also asks the registry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import Any

import fastavro

_VERSION = re.compile(r"^pass_postback\.v(\d+)\.avsc$")


@dataclass(frozen=True)
class Version:
    name: str  # the file name, e.g. pass_postback.v1.avsc
    number: int
    schema: dict[str, Any]


def history() -> list[Version]:
    """The released versions kept in the repository, oldest first."""
    folder = resources.files(__package__).joinpath("history")
    versions = []
    for entry in folder.iterdir():
        match = _VERSION.match(entry.name)
        if match:
            versions.append(Version(entry.name, int(match.group(1)), json.loads(entry.read_text("utf-8"))))
    return sorted(versions, key=lambda version: version.number)


def current() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files(__package__).joinpath("pass_postback.avsc").read_text("utf-8"))
    return schema


def canonical(schema: Any) -> str:
    return fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))


def sample(schema: Any, *, optional: bool) -> Any:
    """A value of ``schema``: unions take their first non-null branch when ``optional``, null otherwise."""
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        if not optional and len(branches) < len(schema):
            return None
        return sample(branches[0], optional=optional)
    if isinstance(schema, str):
        return {"string": "x", "bytes": b"x", "int": 1, "long": 1, "float": 1.0, "double": 1.0,
                "boolean": True, "null": None}[schema]
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"], optional=optional) for f in schema["fields"]}
    if kind == "enum":
        # The last symbol one way, the first the other: an added symbol is exercised too.
        return schema["symbols"][-1 if optional else 0]
    if kind == "array":
        return [sample(schema["items"], optional=optional)]
    if kind == "map":
        return {"k": sample(schema["values"], optional=optional)}
    if kind == "fixed":
        return b"\0" * schema["size"]
    return sample(kind, optional=optional)  # {"type": "long", "logicalType": ...}


def _round_trip(writer: Any, reader: Any) -> str | None:
    parsed_writer = fastavro.parse_schema(writer, expand=True)
    parsed_reader = fastavro.parse_schema(reader, expand=True)
    for optional in (True, False):
        out = BytesIO()
        try:
            fastavro.schemaless_writer(out, parsed_writer, sample(parsed_writer, optional=optional))
            out.seek(0)
            fastavro.schemaless_reader(out, parsed_writer, parsed_reader)
        except Exception as error:  # noqa: BLE001 (fastavro's resolution errors share no base class)
            return f"{type(error).__name__}: {error}"
    return None


def problems(schema: Any = None, versions: list[Version] | None = None) -> list[str]:
    """One line per incompatibility of ``schema`` (the current one by default) with a kept version."""
    schema = current() if schema is None else schema
    found = []
    for version in history() if versions is None else versions:
        backward = _round_trip(version.schema, schema)
        if backward:
            found.append(f"cannot read events written with {version.name} (backward): {backward}")
        forward = _round_trip(schema, version.schema)
        if forward:
            found.append(f"readers on {version.name} cannot read its events (forward): {forward}")
    return found


def kept(schema: Any = None, versions: list[Version] | None = None) -> bool:
    """Whether ``schema`` (the current one by default) is one of the kept versions."""
    form = canonical(current() if schema is None else schema)
    return any(canonical(v.schema) == form for v in (history() if versions is None else versions))
