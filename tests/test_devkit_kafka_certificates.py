"""A throwaway certificate authority for the broker's TLS listeners (passpost_dev/kafka/certificates.py)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from passpost_dev.kafka import Certificates, make_certificates


def test_throwaway_ca_certificates_pass_a_mutual_tls_handshake_for_127_0_0_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.ca_file)
    server.load_cert_chain(files.server_cert_file, files.server_key_file)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=files.ca_file)  # checks the host name too
    client.load_cert_chain(files.client_cert_file, files.client_key_file)
    ours, theirs = socket.socketpair()
    peer: dict[str, object] = {}

    def serve() -> None:
        with server.wrap_socket(theirs, server_side=True) as tls:
            peer.update(tls.getpeercert() or {})

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(ours, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    thread.join(10)
    assert ((("commonName", "passpost"),),) == peer["subject"]

    other = make_certificates(tmp_path / "other")  # a CA of its own, not the first one
    assert other.ca_file.read_bytes() != files.ca_file.read_bytes()


def test_the_files_are_where_the_folder_says() -> None:
    files = Certificates.in_folder(Path("/x"))
    assert files.ca_file == Path("/x/ca.pem") and files.client_key_file == Path("/x/client.key")
