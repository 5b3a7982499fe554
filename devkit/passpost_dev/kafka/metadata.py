"""The readiness probe of the local broker: one Kafka Metadata request on a blocking socket.

Done by hand rather than through aiokafka so that ``LocalKafka.start()`` works from
synchronous code and from inside a running event loop alike. A KRaft broker lists itself
only once it has registered and been unfenced, which is the moment producers with
acks=all can succeed.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

# What a probe of a broker still starting (or of a port that is not Kafka) may raise.
PROBE_ERRORS = (OSError, struct.error, UnicodeDecodeError)


class PartitionState(NamedTuple):
    """One partition as the metadata describes it; ``leader`` is -1 while it has none."""

    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class MetadataAnswer(NamedTuple):
    cluster_id: str | None
    brokers: dict[int, tuple[str, int]]
    # {topic: {partition: state}} for the topics asked about (none when asked for all).
    topics: dict[str, dict[int, PartitionState]] = {}


_CLIENT_ID = b"passpost-localkafka"


def request_metadata(host: str, port: int, timeout: float, topics: Sequence[str] | None = None) -> MetadataAnswer:
    """Send a Metadata v4 request; return the cluster id, the brokers (``{node id: (host, port)}``)
    and, for ``topics``, each partition's leader, replicas and in-sync replicas.

    Raises one of ``PROBE_ERRORS`` if nothing (or not Kafka) answers.
    """
    # Header v1: api_key=3 (Metadata), api_version=4, correlation id, client id; body: the
    # topic array (null: all topics, whose partitions are then not read) and
    # allow_auto_topic_creation=false.
    body = struct.pack(">i", -1) if topics is None else struct.pack(">i", len(topics)) + b"".join(
        struct.pack(">h", len(name.encode())) + name.encode() for name in topics)
    header = struct.pack(">hhih", 3, 4, 1, len(_CLIENT_ID)) + _CLIENT_ID
    reader = _Reader(_exchange(host, port, timeout, header + body + b"\0"))
    reader.int32()  # correlation id
    reader.int32()  # throttle_time_ms
    brokers = {}
    for _ in range(reader.int32()):
        node_id, broker_host, broker_port = reader.int32(), reader.string(), reader.int32()
        reader.string()  # rack
        brokers[node_id] = (broker_host or "", broker_port)
    cluster_id = reader.string()
    described: dict[str, dict[int, PartitionState]] = {}
    if topics is not None:
        reader.int32()  # controller_id: in KRaft any broker, not the active controller
        for _ in range(reader.int32()):
            reader.int16()  # error_code: an unknown topic simply has no partitions
            name = reader.string() or ""
            reader.int8()  # is_internal
            partitions = described.setdefault(name, {})
            for _ in range(reader.int32()):
                reader.int16()  # error_code (LEADER_NOT_AVAILABLE shows as leader -1)
                index, leader = reader.int32(), reader.int32()
                replicas = tuple(reader.int32() for _ in range(reader.int32()))
                isr = tuple(reader.int32() for _ in range(reader.int32()))
                partitions[index] = PartitionState(leader, replicas, isr)
    return MetadataAnswer(cluster_id=cluster_id, brokers=brokers, topics=described)


def request_quorum_leader(host: str, port: int, timeout: float) -> int:
    """The node id of the active KRaft controller (the metadata log's leader), by DescribeQuorum v0.

    A broker forwards the request to the controller. Raises one of ``PROBE_ERRORS`` if nothing
    answers, ``LookupError`` if the quorum has no leader or refuses.
    """
    # DescribeQuorum is a flexible version: request header v2 (a tag buffer after the
    # client id) and compact arrays and strings (lengths as unsigned varints, plus one).
    topic = b"__cluster_metadata"
    header = struct.pack(">hhih", 55, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID + b"\0"
    body = (b"\x02" + bytes([len(topic) + 1]) + topic  # one topic
            + b"\x02" + struct.pack(">i", 0) + b"\0"  # one partition, 0, no tags
            + b"\0" + b"\0")  # the topic's and the request's tags
    reader = _Reader(_exchange(host, port, timeout, header + body))
    reader.int32()  # correlation id
    reader.tags()  # response header v1
    error = reader.int16()
    if error:
        raise LookupError(f"DescribeQuorum refused with error code {error}")
    reader.uvarint()  # topics (one)
    reader.skip(reader.uvarint() - 1)  # the topic name
    reader.uvarint()  # partitions (one)
    reader.int32()  # partition_index
    error = reader.int16()
    if error:
        raise LookupError(f"DescribeQuorum refused the metadata partition with error code {error}")
    leader = reader.int32()
    if leader < 0:
        raise LookupError("the KRaft quorum has no leader at the moment")
    return leader


def _exchange(host: str, port: int, timeout: float, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


class _Reader:
    """Big-endian reads from a Kafka response, for the few types the probe needs."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self._offset = 0

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self._payload, self._offset)
        self._offset += 4
        return int(value)

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self._payload, self._offset)
        self._offset += 2
        return int(value)

    def int8(self) -> int:
        (value,) = struct.unpack_from(">b", self._payload, self._offset)
        self._offset += 1
        return int(value)

    def uvarint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self._payload[self._offset]
            self._offset += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def skip(self, size: int) -> None:
        self._offset += size

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.skip(self.uvarint())

    def string(self) -> str | None:
        (length,) = struct.unpack_from(">h", self._payload, self._offset)
        self._offset += 2
        if length < 0:
            return None
        text = self._payload[self._offset:self._offset + length].decode()
        self._offset += length
        return text
