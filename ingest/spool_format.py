"""The spool's on-disk format: append-only segment files of checksummed records.

A segment is a file ``<20-digit sequence>.seg`` holding records back to back::

    magic "PSR1" | length (u32, big-endian) | CRC-32 of length+payload (u32) | payload

The payload is one Kafka record (``Entry``): the time it was spooled, its topic, key,
value and headers, so that the forwarder sends exactly what the ingress would have sent.

Reading never trusts a record it cannot verify. A record whose checksum fails, or whose
length runs past the end of the file, is *corrupt*; the reader looks for the next
position where a whole, valid record starts (the magic makes that search cheap) and
reports the bytes in between as ``Corrupt`` so they can be quarantined and counted. When
no valid record follows, the bytes are a ``Torn`` tail: what a crash leaves at the end of
the segment being written, cut off before anything after it is appended.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"PSR1"
HEADER = struct.Struct(">4sII")
SEGMENT_SUFFIX = ".seg"
# A record larger than this is corrupt whatever its checksum says: the ingress never
# spools a Kafka record above a few MiB, and a flipped bit in a length must not make the
# reader allocate gigabytes.
MAX_PAYLOAD = 64 * 1024 * 1024

_FIXED = struct.Struct(">BdH")  # version, spooled at (unix seconds), topic length
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_VERSION = 1

Headers = list[tuple[str, bytes]]


class FormatError(ValueError):
    """A payload that passed its checksum but does not decode: written by another version."""


@dataclass(frozen=True)
class Entry:
    """One spooled Kafka record."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    spooled_at: float


@dataclass(frozen=True)
class Corrupt:
    """Bytes ``[start, end)`` of a segment that are not a valid record, followed by one that is."""

    start: int
    end: int


@dataclass(frozen=True)
class Torn:
    """An incomplete tail from ``start`` to the end of the segment, with no valid record after it."""

    start: int
    end: int


def encode_entry(entry: Entry) -> bytes:
    topic = entry.topic.encode()
    parts = [_FIXED.pack(_VERSION, entry.spooled_at, len(topic)), topic]
    if entry.key is None:
        parts.append(_I32.pack(-1))
    else:
        parts += [_I32.pack(len(entry.key)), entry.key]
    parts += [_U32.pack(len(entry.value)), entry.value, _U16.pack(len(entry.headers))]
    for name, value in entry.headers:
        encoded = name.encode()
        parts += [_U16.pack(len(encoded)), encoded, _U32.pack(len(value)), value]
    return b"".join(parts)


def decode_entry(payload: bytes) -> Entry:
    try:
        version, spooled_at, topic_length = _FIXED.unpack_from(payload, 0)
        if version != _VERSION:
            raise FormatError(f"record version {version}, this passpost writes {_VERSION}")
        at = _FIXED.size
        topic = payload[at:at + topic_length].decode()
        at += topic_length
        (key_length,) = _I32.unpack_from(payload, at)
        at += _I32.size
        key = None
        if key_length >= 0:
            key, at = payload[at:at + key_length], at + key_length
        (value_length,) = _U32.unpack_from(payload, at)
        at += _U32.size
        value, at = payload[at:at + value_length], at + value_length
        (count,) = _U16.unpack_from(payload, at)
        at += _U16.size
        headers: Headers = []
        for _ in range(count):
            (name_length,) = _U16.unpack_from(payload, at)
            at += _U16.size
            name, at = payload[at:at + name_length].decode(), at + name_length
            (header_length,) = _U32.unpack_from(payload, at)
            at += _U32.size
            headers.append((name, payload[at:at + header_length]))
            at += header_length
    except (struct.error, UnicodeDecodeError) as error:
        raise FormatError(f"undecodable record: {error}") from None
    if at != len(payload):
        raise FormatError("record has trailing bytes")
    return Entry(topic, key, value, headers, spooled_at)


def frame(payload: bytes) -> bytes:
    """A payload as it is appended to a segment."""
    length = _U32.pack(len(payload))
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def segment_name(sequence: int) -> str:
    return f"{sequence:020d}{SEGMENT_SUFFIX}"


def segment_sequence(name: str) -> int | None:
    stem = name.removesuffix(SEGMENT_SUFFIX)
    if stem == name or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def _valid_at(data: bytes | memoryview, at: int) -> int | None:
    """The end of the valid record starting at ``at``, or None."""
    if len(data) - at < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(data, at)
    end: int = at + HEADER.size + length
    if magic != MAGIC or length > MAX_PAYLOAD or end > len(data):
        return None
    if zlib.crc32(data[at + HEADER.size:end], zlib.crc32(_U32.pack(length))) != crc:
        return None
    return end


def _next_valid(data: bytes, after: int) -> int | None:
    at = after
    while True:
        at = data.find(MAGIC, at + 1)
        if at < 0:
            return None
        if _valid_at(data, at) is not None:
            return at


def scan(data: bytes, base: int = 0) -> Iterator[tuple[int, int, Entry | Corrupt | Torn]]:
    """Every record in ``data`` (a segment's bytes from offset ``base`` to its end) as
    ``(start, end, item)`` with file offsets. ``data`` must run to the end of what was
    written, so that an incomplete record is told apart from a corrupt one."""
    at = 0
    view = memoryview(data)
    while at < len(data):
        end = _valid_at(view, at)
        if end is not None:
            payload = bytes(view[at + HEADER.size:end])
            try:
                entry = decode_entry(payload)
            except FormatError:
                resume = _next_valid(data, at)
                stop = len(data) if resume is None else resume
                yield base + at, base + stop, Corrupt(base + at, base + stop)
                at = stop
                continue
            yield base + at, base + end, entry
            at = end
            continue
        resume = _next_valid(data, at)
        if resume is None:
            yield base + at, base + len(data), Torn(base + at, base + len(data))
            return
        yield base + at, base + resume, Corrupt(base + at, base + resume)
        at = resume


def read_batch(path: str, start: int, end: int,
               max_bytes: int = 1024 * 1024) -> list[tuple[int, int, Entry | Corrupt | Torn]]:
    """The records of a segment from offset ``start``, about ``max_bytes`` of them (at least
    one), never past ``end`` (what is known to be written). Reads only that window unless it
    meets a record it cannot verify: then it reads the rest of the segment to tell a corrupt
    record (a valid one follows) from a torn tail, and returns that one item."""
    items: list[tuple[int, int, Entry | Corrupt | Torn]] = []
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(max(0, min(end - start, max_bytes)))
        at = 0
        while start + at < end:
            if len(data) - at >= HEADER.size:
                magic, length, _ = HEADER.unpack_from(data, at)
                record_end = at + HEADER.size + length
                if magic == MAGIC and length <= MAX_PAYLOAD and start + record_end <= end:
                    if record_end > len(data):
                        if items:
                            break  # the next call reads it
                        data += file.read(record_end - len(data))
                    if _valid_at(data, at) == record_end:
                        try:
                            entry = decode_entry(data[at + HEADER.size:record_end])
                        except FormatError:
                            pass
                        else:
                            items.append((start + at, start + record_end, entry))
                            at = record_end
                            continue
            elif len(data) < end - start and not items:
                more = file.read(HEADER.size)
                if more:  # the window ended inside a header
                    data += more
                    continue
            if items:
                break  # return the good records first; the next call starts at the bad one
            file.seek(start + at)
            rest = file.read(max(0, end - start - at))
            return [next(scan(rest, start + at))]
    return items


def read_region(path: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a segment file (shorter if the file is)."""
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(max(0, end - start))


def fsync_directory(path: str) -> None:
    """Make a file's creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
