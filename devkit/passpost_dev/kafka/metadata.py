"""The readiness probe of the local broker: one Kafka Metadata request on a blocking socket.

Done by hand rather than through aiokafka so that ``LocalKafka.start()`` works from
synchronous code and from inside a running event loop alike. A KRaft broker lists itself
only once it has registered and been unfenced, which is the moment producers with
acks=all can succeed.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

# What a probe of a broker still starting (or of a port that is not Kafka) may raise.
PROBE_ERRORS = (OSError, struct.error, UnicodeDecodeError)


class MetadataAnswer(NamedTuple):
    cluster_id: str | None
    brokers: dict[int, tuple[str, int]]


def request_metadata(host: str, port: int, timeout: float) -> MetadataAnswer:
    """Send a Metadata v4 request; return the cluster id and the brokers (``{node id: (host, port)}``) it lists.

    Raises one of ``PROBE_ERRORS`` if nothing (or not Kafka) answers.
    """
    client_id = b"passpost-localkafka"
    # Header v1: api_key=3 (Metadata), api_version=4, correlation id, client id; body:
    # null topic array (all topics) and allow_auto_topic_creation=false.
    request = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">ib", -1, 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        reader = _Reader(_recv_exactly(sock, size))
    reader.int32()  # correlation id
    reader.int32()  # throttle_time_ms
    brokers = {}
    for _ in range(reader.int32()):
        node_id, broker_host, broker_port = reader.int32(), reader.string(), reader.int32()
        reader.string()  # rack
        brokers[node_id] = (broker_host or "", broker_port)
    return MetadataAnswer(cluster_id=reader.string(), brokers=brokers)


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

    def string(self) -> str | None:
        (length,) = struct.unpack_from(">h", self._payload, self._offset)
        self._offset += 2
        if length < 0:
            return None
        text = self._payload[self._offset:self._offset + length].decode()
        self._offset += length
        return text
