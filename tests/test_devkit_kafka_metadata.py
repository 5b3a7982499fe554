"""The local broker's readiness probe (passpost_dev/kafka/metadata.py): one Metadata v4 request, read by hand."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from passpost_dev.kafka.metadata import PROBE_ERRORS, MetadataAnswer, request_metadata
from passpost_dev.ports import free_port


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


def metadata_response(cluster_id: str | None, brokers: dict[int, tuple[str, int]]) -> bytes:
    body = struct.pack(">ii", 1, 0) + struct.pack(">i", len(brokers))
    for node_id, (host, port) in brokers.items():
        body += struct.pack(">i", node_id) + _string(host) + struct.pack(">i", port) + _string(None)
    body += _string(cluster_id) + b"\x00\x00\x00\x00"  # controller id and topics follow: not read
    return struct.pack(">i", len(body)) + body


@contextmanager
def one_answer(answer: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A server on loopback that reads one request, sends ``answer`` and hangs up; yields its port and requests."""
    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                (size,) = struct.unpack(">i", connection.recv(4))
                requests.append(connection.recv(size))
                connection.sendall(answer)

        thread = threading.Thread(target=serve)
        thread.start()
        yield server.getsockname()[1], requests
        thread.join(10)


def test_the_answer_names_the_cluster_and_its_registered_brokers() -> None:
    with one_answer(metadata_response("cluster-a", {1: ("127.0.0.1", 9092)})) as (port, requests):
        answer = request_metadata("127.0.0.1", port, timeout=5)
    assert answer == MetadataAnswer("cluster-a", {1: ("127.0.0.1", 9092)})
    [request] = requests
    assert struct.unpack_from(">hh", request) == (3, 4)  # Metadata, version 4


def test_a_broker_not_registered_yet_lists_no_brokers() -> None:
    with one_answer(metadata_response("cluster-a", {})) as (port, _):
        assert request_metadata("127.0.0.1", port, timeout=5).brokers == {}


@pytest.mark.parametrize("answer", [b"", b"\x00\x00\x00\x08\x00\x00"])
def test_a_port_that_hangs_up_or_is_not_kafka_raises_a_probe_error(answer: bytes) -> None:
    with one_answer(answer) as (port, _), pytest.raises(PROBE_ERRORS):
        request_metadata("127.0.0.1", port, timeout=5)


def test_nothing_listening_raises_a_probe_error() -> None:
    with pytest.raises(PROBE_ERRORS):
        request_metadata("127.0.0.1", free_port(), timeout=5)
