"""A throwaway certificate authority for the broker's TLS listeners (made with ``openssl``).

EC P-256 keys, unencrypted PKCS#8: quick to make, and read by Kafka's PEM key store and by
Python's ``ssl`` alike.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import NamedTuple

from passpost_dev.kafka.errors import LocalKafkaError, require_executable

_CERT_DAYS = 30
_FILE_NAMES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


class Certificates(NamedTuple):
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and localhost
    signed by it, and a client certificate (CN ``passpost``) for mutual TLS."""

    ca_file: Path
    ca_key_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path

    @classmethod
    def in_folder(cls, folder: Path) -> Certificates:
        """Where ``make_certificates(folder)`` writes them (made or not)."""
        return cls(*(Path(folder) / name for name in _FILE_NAMES))


_OPENSSL_CONFIG = """\
[req]
distinguished_name = subject
prompt = no
[subject]
CN = passpost local test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(folder: Path) -> Certificates:
    """Make a new CA and the certificates it signs in ``folder``.

    Each call makes a different CA, so a second call in another folder gives a CA the
    broker's certificate does not chain to.
    """
    openssl = require_executable("openssl", "openssl is needed to make the test certificates")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG, encoding="utf-8")
    files = Certificates.in_folder(folder)

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], check=False, cwd=folder, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise LocalKafkaError(f"openssl {args[0]} failed (exit {result.returncode}): {detail}")

    for key in (files.ca_key_file, files.server_key_file, files.client_key_file):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    run("req", "-new", "-x509", "-config", str(config), "-extensions", "ca", "-key", str(files.ca_key_file),
        "-sha256", "-days", str(_CERT_DAYS), "-set_serial", _serial(), "-out", str(files.ca_file))
    for name, cert, key in (("server", files.server_cert_file, files.server_key_file),
                            ("client", files.client_cert_file, files.client_key_file)):
        request = folder / f"{name}.csr"
        subject = "/CN=localhost" if name == "server" else "/CN=passpost"
        run("req", "-new", "-config", str(config), "-key", str(key), "-subj", subject, "-out", str(request))
        run("x509", "-req", "-in", str(request), "-CA", str(files.ca_file), "-CAkey", str(files.ca_key_file),
            "-set_serial", _serial(), "-sha256", "-days", str(_CERT_DAYS),
            "-extfile", str(config), "-extensions", name, "-out", str(cert))
        request.unlink()
    return files


def _serial() -> str:
    return "0x" + uuid.uuid4().hex[:16]


def pem_property(path: Path) -> str:
    """A PEM file as a Java properties value on one line (``Properties.load`` reads "\\n" as a newline)."""
    return "\\n".join(path.read_text(encoding="ascii").strip().splitlines())
