"""A real single-node Apache Kafka broker (KRaft) run as a local JVM process.

Tests and ``passpost dev`` need a genuine broker, not a fake, and this machine may have
no Docker engine. Kafka's own jars are resolved from Maven Central with ``mvn`` once,
cached, and started with ``java``; nothing else is installed.

    with LocalKafka() as kafka:
        print(kafka.bootstrap_servers)     # "127.0.0.1:PORT"

Secured listeners are optional extras next to the PLAINTEXT one, for testing the
client's TLS and SASL settings against a real broker:

    with LocalKafka(listeners=SECURE_LISTENERS) as kafka:
        kafka.bootstrap_servers_for("SASL_SSL")  # SCRAM-SHA-512/256 or PLAIN over TLS
        kafka.sasl_username, kafka.sasl_password, kafka.ca_file
        kafka.client_env("SSL", client_certificate=True)  # PASSPOST_KAFKA_* variables

SASL users are written into the storage when it is formatted (SCRAM) and into the
listener's JAAS config (PLAIN); the TLS certificates come from a throwaway CA that
``openssl`` makes in the broker's folder. The broker talks to itself over PLAINTEXT.

``python -m passpost.localkafka fetch`` prefetches the jars; ``... run`` starts a broker
and keeps it up until Ctrl-C.

The cache (``$PASSPOST_CACHE_DIR`` or ``~/.cache/passpost``) holds, per Kafka version,
``libs/`` (the jars), a formatted KRaft storage template and a class-data-sharing
archive; the last two only make start-up faster and are rebuilt when missing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from passpost.errors import PasspostError
from passpost.ports import free_port
from passpost.processes import stop

KAFKA_VERSION = "4.1.1"
# Kafka's poms depend on slf4j-api 1.7 and log4j-core but ship no binding between them
# (the distribution tarball adds it), so without this jar the broker would log nothing.
LOG4J_VERSION = "2.24.3"
# Pinned because Maven 3.8's default dependency plugin (2.8) predates the options we use.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_COMPLETE_MARKER = "libs.complete"
# Formatted once per Kafka version, then copied for every new broker (see _prepare_storage).
_STORAGE_TEMPLATE = "formatted-storage"
_NODE_ID = 1

# The listeners LocalKafka can add next to PLAINTEXT, by their security protocol.
SECURE_LISTENERS = ("SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
SSL_CLIENT_AUTH = ("none", "requested", "required")
_CERT_DAYS = 30


class LocalKafkaError(PasspostError, RuntimeError):
    """The local broker could not be provided; the first line of ``str()`` says why."""


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    configured = os.environ.get("PASSPOST_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "passpost"


def kafka_jars_cached(cache_dir: Path | None = None) -> bool:
    """Whether ``ensure_kafka_jars`` has nothing to download."""
    return (cache_root(cache_dir) / f"kafka-{KAFKA_VERSION}" / _COMPLETE_MARKER).exists()


def ensure_kafka_jars(cache_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Return the folder holding Kafka's broker jars and every runtime dependency.

    The first call resolves them with Maven (into ``<cache>/kafka-<version>/libs``); later
    calls only check the completion marker, so they cost a ``stat``.
    """
    home = cache_root(cache_dir) / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / _COMPLETE_MARKER
    if marker.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    # Parallel test processes (or CI jobs sharing a cache) would otherwise download into
    # the same folder at once; the loser of the lock finds the marker and returns.
    with _exclusive_lock(home / ".lock"):
        if marker.exists():
            return libs
        _java()  # Maven needs it too, and "java is missing" is the clearer message
        mvn = _require_executable("mvn", "Maven (mvn) is needed to download Kafka's jars")
        partial = home / "libs.partial"
        # An interrupted earlier run may have left either folder half filled.
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        pom = home / "pom.xml"
        pom.write_text(_pom_xml(), encoding="utf-8")
        command = [
            # -U: an earlier offline attempt must not leave a cached "not found" behind.
            mvn, "-B", "-U", "--no-transfer-progress", "-Dstyle.color=never", "-f", str(pom),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
        if quiet:
            command.insert(1, "-q")
        result = subprocess.run(
            command, cwd=home, stdin=subprocess.DEVNULL, text=True,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
        jars = sorted(partial.glob("*.jar")) if partial.is_dir() else []
        if result.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
            raise LocalKafkaError(
                f"mvn could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} "
                f"(exit {result.returncode}): {_maven_error(result.stdout)}"
            )
        partial.rename(libs)
        marker.write_text("\n".join(j.name for j in jars) + "\n", encoding="utf-8")
    return libs


def _pom_xml() -> str:
    dependencies = [
        ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    entries = "".join(
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>\n"
        for group, artifact, version in dependencies
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>passpost.local</groupId>\n"
        f"  <artifactId>kafka-broker-libs</artifactId><version>{KAFKA_VERSION}</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{entries}  </dependencies>\n"
        "</project>\n"
    )


def _maven_error(output: str | None) -> str:
    if output is None:
        return "see Maven's output above"
    # Maven 3.8 writes colour codes even in batch mode with colours turned off.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[ERROR]") and len(line) > 8]
    return (errors or lines or ["Maven printed nothing"])[0]


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_executable(name: str, purpose: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise LocalKafkaError(f"{purpose}, but `{name}` is not on PATH")
    return found


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _require_executable("java", "Java 17+ is needed to run the Kafka broker")


def _kafka_uuid() -> str:
    while True:
        # Kafka's Uuid string form; a leading "-" would be read as an option by the CLI.
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _copy_formatted_storage(template: Path, data: Path) -> None:
    """Give ``data`` the formatted storage of ``template`` under fresh identities.

    A formatted KRaft directory is ``meta.properties`` (ids) plus ``bootstrap.checkpoint``
    (feature levels that depend only on the Kafka version), so copying it and renewing
    the ids is equivalent to formatting, without a second JVM start per broker.
    """
    shutil.copytree(template, data, dirs_exist_ok=True)
    fresh = {"cluster.id": _kafka_uuid(), "directory.id": _kafka_uuid()}
    meta = data / "meta.properties"
    lines = meta.read_text(encoding="utf-8").splitlines()
    renewed = [
        f"{key}={fresh[key]}" if (key := line.partition("=")[0].strip()) in fresh else line
        for line in lines
    ]
    meta.write_text("\n".join(renewed) + "\n", encoding="utf-8")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"


class _MetadataAnswer(NamedTuple):
    cluster_id: str | None
    brokers: dict[int, tuple[str, int]]


def _metadata(host: str, port: int, timeout: float) -> _MetadataAnswer:
    """Send a Kafka Metadata v4 request; return the cluster id and the brokers it lists.

    Done by hand on a blocking socket rather than through aiokafka so that ``start()``
    works from synchronous code and from inside a running event loop alike. A KRaft
    broker only lists itself once it has registered and been unfenced, which is the
    moment producers with acks=all can succeed.
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
    return _MetadataAnswer(cluster_id=reader.string(), brokers=brokers)


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


def _cluster_id_of(data: Path) -> str:
    for line in (data / "meta.properties").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    raise LocalKafkaError(f"{data / 'meta.properties'} names no cluster.id")


def _class_archive(libs: Path, java: str) -> Path:
    """Where the broker's class-data-sharing archive for this JDK lives.

    Loading and verifying Kafka's and Scala's classes is most of a broker's start-up on
    two cores; an AppCDS archive of them roughly halves it. The archive is only valid
    for the JVM build that wrote it, so its name is keyed on the JVM's files.
    """
    launcher = Path(os.path.realpath(java))
    identity = [launcher, *sorted(launcher.parent.parent.glob("lib/server/libjvm.*"))]
    key = "|".join(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in identity)
    return libs.parent / f"classes-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


class Certificates(NamedTuple):
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and localhost
    signed by it, and a client certificate (CN ``passpost``) for mutual TLS."""

    ca_file: Path
    ca_key_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


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
    """Make a new CA and the certificates it signs in ``folder`` (with ``openssl``).

    EC P-256 keys, unencrypted PKCS#8: quick to make, and read by Kafka's PEM key store
    and by Python's ``ssl`` alike. Each call makes a different CA, so a second call in
    another folder gives a CA the broker's certificate does not chain to.
    """
    openssl = _require_executable("openssl", "openssl is needed to make the test certificates")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG, encoding="utf-8")
    files = Certificates(*(folder / name for name in (
        "ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")))

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


def _pem_property(path: Path) -> str:
    # A Java properties value on one line: Properties.load reads "\n" as a newline.
    return "\\n".join(path.read_text(encoding="ascii").strip().splitlines())


class _Process:
    """The running JVM, kept apart from ``LocalKafka`` so that a finalizer can end it
    (and remove the temp dir) without holding a reference to the ``LocalKafka``."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        # (file the JVM dumps its class archive into at exit, where it is kept after).
        self.archive_dump: tuple[Path, Path] | None = None

    def terminate(self, timeout: float) -> None:
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, None)

    def _end(self, signum: signal.Signals, timeout: float | None) -> None:
        popen, self.popen = self.popen, None
        if popen is None:
            return
        stop(popen, signum, timeout)
        self._keep_archive(popen)

    def _keep_archive(self, popen: subprocess.Popen[bytes]) -> None:
        dump, self.archive_dump = self.archive_dump, None
        if dump is None:
            return
        partial, final = dump
        # A JVM killed by SIGKILL may have been halfway through writing the archive.
        if popen.returncode != -signal.SIGKILL and partial.is_file() and partial.stat().st_size:
            os.replace(partial, final)
        else:
            partial.unlink(missing_ok=True)


def _cleanup(process: _Process, owned_dir: Path | None) -> None:
    process.kill()
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)


class LocalKafka:
    """One Kafka broker+controller on 127.0.0.1, with its data in ``workdir``.

    Ports and data survive ``stop()``/``kill()``: calling ``start()`` again brings the same
    broker back at the same address with its topics and records, which is what fault
    tests need. ``close()`` stops it and deletes the directory if this object made it.

    ``listeners`` adds secured listeners (any of ``SECURE_LISTENERS``), each on its own
    port: SASL ones accept ``sasl_username``/``sasl_password`` with SCRAM-SHA-512,
    SCRAM-SHA-256 or PLAIN; TLS ones present a certificate from a CA made at the first
    start (``ca_file``). ``ssl_client_auth`` is the SSL listener's ``ssl.client.auth``:
    with "requested" (the default) a client may present ``client_cert_file``.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        heap: str = "384m",
        port: int | None = None,
        log_level: str = "WARN",
        cache_dir: Path | None = None,
        class_archive: bool = True,
        listeners: Iterable[str] = (),
        sasl_username: str = "passpost",
        sasl_password: str = "passpost-secret",
        ssl_client_auth: str = "requested",
    ) -> None:
        requested = set(listeners)
        self.listeners = tuple(name for name in SECURE_LISTENERS if name in requested)
        unknown = requested - set(SECURE_LISTENERS)
        if unknown:
            raise ValueError(f"unknown listeners {sorted(unknown)}; choose from {SECURE_LISTENERS}")
        if ssl_client_auth not in SSL_CLIENT_AUTH:
            raise ValueError(f"ssl_client_auth must be one of {SSL_CLIENT_AUTH}, not {ssl_client_auth!r}")
        # They go into a JAAS config and a StorageTool argument unquoted.
        for name, value in (("sasl_username", sasl_username), ("sasl_password", sasl_password)):
            if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
                raise ValueError(f"{name} may hold only letters, digits, '.', '_' and '-'")
        self.sasl_username = sasl_username
        self.sasl_password = sasl_password
        self.ssl_client_auth = ssl_client_auth
        self._listener_ports: dict[str, int] = {}
        self._owns_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="passpost-kafka-")) if workdir is None else Path(workdir)
        self.heap = heap
        self.log_level = log_level
        self._cache_dir = cache_dir
        self._use_class_archive = class_archive
        self._port = port
        self._controller_port: int | None = None
        self._process = _Process()
        self._finalizer = weakref.finalize(
            self, _cleanup, self._process, self.workdir if self._owns_dir else None
        )

    @property
    def bootstrap_servers(self) -> str:
        if self._port is None:
            raise LocalKafkaError("the broker has no address until start() has been called")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    def bootstrap_servers_for(self, protocol: str) -> str:
        """The address of the listener for ``protocol`` ("PLAINTEXT" or one of ``listeners``)."""
        if protocol == "PLAINTEXT":
            return self.bootstrap_servers
        if protocol not in self.listeners:
            raise LocalKafkaError(f"this broker has no {protocol} listener (it has {self.listeners or 'none'})")
        if protocol not in self._listener_ports:
            raise LocalKafkaError("the broker has no address until start() has been called")
        return f"127.0.0.1:{self._listener_ports[protocol]}"

    @property
    def certificates(self) -> Certificates:
        """The throwaway CA and the certificates it signed (made at the first start)."""
        if not any(name.endswith("SSL") for name in self.listeners):
            raise LocalKafkaError("this broker has no SSL or SASL_SSL listener, hence no certificates")
        folder = self.workdir / "tls"
        return Certificates(*(folder / name for name in (
            "ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")))

    @property
    def ca_file(self) -> Path:
        return self.certificates.ca_file

    @property
    def client_cert_file(self) -> Path:
        return self.certificates.client_cert_file

    @property
    def client_key_file(self) -> Path:
        return self.certificates.client_key_file

    def client_env(
        self, protocol: str = "PLAINTEXT", *, mechanism: str = "SCRAM-SHA-512", client_certificate: bool = False
    ) -> dict[str, str]:
        """``PASSPOST_KAFKA_*`` variables that connect passpost to the ``protocol`` listener."""
        env = {
            "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers_for(protocol),
            "PASSPOST_KAFKA_SECURITY_PROTOCOL": protocol,
        }
        if protocol.startswith("SASL_"):
            if mechanism not in SASL_MECHANISMS:
                raise ValueError(f"mechanism must be one of {SASL_MECHANISMS}, not {mechanism!r}")
            env.update({"PASSPOST_KAFKA_SASL_MECHANISM": mechanism,
                        "PASSPOST_KAFKA_SASL_USERNAME": self.sasl_username,
                        "PASSPOST_KAFKA_SASL_PASSWORD": self.sasl_password})
        if protocol.endswith("SSL"):
            env["PASSPOST_KAFKA_SSL_CA_FILE"] = str(self.ca_file)
            if client_certificate:
                env["PASSPOST_KAFKA_SSL_CERT_FILE"] = str(self.client_cert_file)
                env["PASSPOST_KAFKA_SSL_KEY_FILE"] = str(self.client_key_file)
        return env

    @property
    def log_path(self) -> Path:
        """The broker's log (WARN and above by default, plus the JVM's own output)."""
        return self.workdir / "kafka.log"

    @property
    def running(self) -> bool:
        popen = self._process.popen
        return popen is not None and popen.poll() is None

    def start(self, timeout: float = 60) -> LocalKafka:
        """Start the broker (formatting its storage the first time) and return once it
        answers metadata requests. Starting a running broker does nothing."""
        if self.running:
            return self
        self._process.kill()  # reaps a broker that exited by itself since
        deadline = time.monotonic() + timeout
        java = _java()
        libs = ensure_kafka_jars(self._cache_dir)
        self._port = self._port or free_port()
        while self._controller_port in (None, self._port):
            self._controller_port = free_port()
        taken = {self._port, self._controller_port}
        for name in self.listeners:
            port = self._listener_ports.get(name)
            while port is None or port in taken:
                port = free_port()
            self._listener_ports[name] = port
            taken.add(port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if any(name.endswith("SSL") for name in self.listeners) and not self.ca_file.exists():
            make_certificates(self.workdir / "tls")
        config = self._write_config()
        tool_sharing, broker_sharing = self._class_sharing(libs, java)
        if not (self.workdir / "data" / "meta.properties").exists():
            self._prepare_storage(java, libs, tool_sharing, config, deadline)
        self._note(f"starting the broker on {self.bootstrap_servers}")
        with open(self.log_path, "ab") as log:
            self._process.popen = subprocess.Popen(
                self._java_command(java, libs, broker_sharing, "kafka.Kafka", str(config)),
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the Python process must not reach the
                # JVM directly, or it would shut down while we still think it is serving.
                start_new_session=True,
            )
        try:
            self._wait_until_serving(_cluster_id_of(self.workdir / "data"), deadline)
        except BaseException:
            self._process.kill()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Shut the broker down cleanly (SIGTERM), or SIGKILL it after ``timeout`` s."""
        if self.running:
            self._note("stopping the broker (SIGTERM)")
        self._process.terminate(timeout)

    def kill(self) -> None:
        """End the broker abruptly (SIGKILL), as a crash would; ``start()`` recovers it."""
        if self.running:
            self._note("killing the broker (SIGKILL)")
        self._process.kill()

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the benchmarks measure its CPU)."""
        popen = self._process.popen
        return None if popen is None else popen.pid

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open and nothing is answered, as
        with a broker stuck in a long GC pause or on a partitioned network."""
        popen = self._process.popen
        if popen is not None and popen.poll() is None:
            self._note("pausing the broker (SIGSTOP)")
            os.kill(popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT)."""
        popen = self._process.popen
        if popen is not None and popen.poll() is None:
            self._note("resuming the broker (SIGCONT)")
            os.kill(popen.pid, signal.SIGCONT)

    def restart(self, timeout: float = 60) -> LocalKafka:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._finalizer.detach()

    def __enter__(self) -> LocalKafka:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        address = f"127.0.0.1:{self._port}" if self._port else "no address yet"
        return f"<LocalKafka {address} {state} in {self.workdir}>"

    def _class_sharing(self, libs: Path, java: str) -> tuple[list[str], list[str]]:
        """JVM flags for the class archive: (for the storage tool, for the broker)."""
        if not self._use_class_archive:
            return [], []
        archive = _class_archive(libs, java)
        if archive.exists():
            use = [f"-XX:SharedArchiveFile={archive}"]
            return use, use
        # None for this JVM yet: this broker writes one when it stops cleanly.
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.{id(self)}.partial")
        self._process.archive_dump = (partial, archive)
        return [], [f"-XX:ArchiveClassesAtExit={partial}"]

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        secured = [f"{name}://127.0.0.1:{self._listener_ports[name]}" for name in self.listeners]
        properties: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": _NODE_ID,
            "controller.quorum.voters": f"{_NODE_ID}@127.0.0.1:{self._controller_port}",
            "listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self._port}",
                                   f"CONTROLLER://127.0.0.1:{self._controller_port}", *secured]),
            "advertised.listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self._port}", *secured]),
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", *(f"{name}:{name}" for name in self.listeners)]),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": data,
            # One broker: every internal topic must fit on it.
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "min.insync.replicas": 1,
            "default.replication.factor": 1,
            "num.partitions": 1,
            "auto.create.topics.enable": "false",
            # The first consumer group or transactional producer creates these topics;
            # the defaults (50 partitions each) take seconds to create on two cores.
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.num.partitions": 1,
            # Consumers in tests should get their partitions at once, not after 3 s.
            "group.initial.rebalance.delay.ms": 0,
            # A broker SIGKILLed and started again must wait until the controller expires
            # its previous session before it may register again: 9 s by default.
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            # Fewer threads than the defaults: two cores, one client at a time.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.cleaner.threads": 1,
            "auto.leader.rebalance.enable": "false",
            # Small sparse index files and segments keep the data dir small.
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.index.size.max.bytes": 1024 * 1024,
            "metadata.log.segment.bytes": 8 * 1024 * 1024,
            **self._security_properties(),
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()), encoding="utf-8")
        (self.workdir / "log4j2.properties").write_text(self._log4j2_properties(), encoding="utf-8")
        return path

    def _security_properties(self) -> dict[str, object]:
        properties: dict[str, object] = {}
        for name in self.listeners:
            prefix = f"listener.name.{name.lower()}."
            if name.startswith("SASL_"):
                properties[prefix + "sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
                for mechanism in ("scram-sha-512", "scram-sha-256"):
                    # The users themselves are in the metadata, written at format time.
                    properties[prefix + f"{mechanism}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
                properties[prefix + "plain.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'user_{self.sasl_username}="{self.sasl_password}";')
            if name == "SSL":
                properties[prefix + "ssl.client.auth"] = self.ssl_client_auth
        if any(name.endswith("SSL") for name in self.listeners):
            certificates = self.certificates
            # PEM given inline: no key store files, no store or key passwords.
            properties.update({
                "ssl.keystore.type": "PEM",
                "ssl.keystore.certificate.chain": "\\n".join(
                    _pem_property(path) for path in (certificates.server_cert_file, certificates.ca_file)),
                "ssl.keystore.key": _pem_property(certificates.server_key_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.certificates": _pem_property(certificates.ca_file),
            })
        return properties

    def _scram_arguments(self) -> list[str]:
        if not any(name.startswith("SASL_") for name in self.listeners):
            return []
        return [argument for mechanism in SASL_MECHANISMS if mechanism.startswith("SCRAM")
                for argument in ("--add-scram",
                                 f"{mechanism}=[name={self.sasl_username},password={self.sasl_password}]")]

    def _storage_template(self, libs: Path) -> Path:
        scram = self._scram_arguments()
        if not scram:
            return libs.parent / _STORAGE_TEMPLATE
        # A template formatted with SCRAM users holds them (salted) in its bootstrap
        # checkpoint; it serves later brokers with the same users only.
        key = hashlib.sha256("\0".join(scram).encode()).hexdigest()[:16]
        return libs.parent / f"{_STORAGE_TEMPLATE}-scram-{key}"

    def _log4j2_properties(self) -> str:
        # Everything goes to the JVM's stdout, which start() sends to log_path, so that
        # log lines and JVM errors (bad heap size, missing class) share one file.
        return (
            "status = error\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.target = SYSTEM_OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            f"rootLogger.level = {self.log_level}\n"
            "rootLogger.appenderRef.out.ref = out\n"
        )

    def _java_command(
        self, java: str, libs: Path, sharing: list[str], main: str, *args: str
    ) -> list[str]:
        return [
            java,
            *sharing,
            # Writing the archive warns about every class it cannot hold; reading a stale
            # one warns too. Either way the JVM carries on, so the log need not say so.
            "-Xlog:cds=off,cds+dynamic=off",
            f"-Xmx{self.heap}",
            "-Xms64m",
            # Serial GC and the C1-only JIT start fastest on two cores; a test broker
            # moves little data, so peak throughput matters less than start-up.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp", f"{libs}/*",
            main, *args,
        ]

    def _prepare_storage(
        self, java: str, libs: Path, sharing: list[str], config: Path, deadline: float
    ) -> None:
        data = self.workdir / "data"
        template = self._storage_template(libs)
        if template.is_dir():
            _copy_formatted_storage(template, data)
            return
        self._format(java, libs, sharing, config, deadline)
        # Keep this broker's freshly formatted storage as the template for later ones.
        partial = template.with_name(f"{template.name}.{os.getpid()}.{id(self)}.partial")
        shutil.copytree(data, partial)
        try:
            partial.rename(template)
        except OSError:  # another broker stored its template first; theirs is as good
            shutil.rmtree(partial, ignore_errors=True)

    def _format(
        self, java: str, libs: Path, sharing: list[str], config: Path, deadline: float
    ) -> None:
        command = self._java_command(
            java, libs, sharing, "kafka.tools.StorageTool",
            "format", "--cluster-id", _kafka_uuid(), "--config", str(config), "--ignore-formatted",
            *self._scram_arguments(),
        )
        self._note("formatting the KRaft storage")
        with open(self.log_path, "ab") as log:
            try:
                result = subprocess.run(
                    command, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, timeout=max(1.0, deadline - time.monotonic()),
                )
            except subprocess.TimeoutExpired:
                raise self._failure("formatting the KRaft storage timed out") from None
        if result.returncode != 0:
            raise self._failure(f"formatting the KRaft storage failed (exit {result.returncode})")

    def _wait_until_serving(self, cluster_id: str, deadline: float) -> None:
        assert self._port is not None
        last_error = "no answer yet"
        while True:
            popen = self._process.popen
            if popen is None or popen.poll() is not None:
                code = None if popen is None else popen.returncode
                raise self._failure(f"the broker exited during start-up (exit {code})")
            try:
                answer = _metadata("127.0.0.1", self._port, timeout=2.0)
                # The cluster id tells our broker from another process on a fixed port.
                if answer.cluster_id != cluster_id:
                    last_error = f"port {self._port} answers for cluster {answer.cluster_id}, not ours"
                elif _NODE_ID in answer.brokers:
                    return
                else:
                    last_error = "broker not registered yet"
            except (OSError, struct.error, UnicodeDecodeError) as error:
                last_error = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                raise self._failure(f"the broker did not serve clients in time ({last_error})")
            time.sleep(0.1)

    def _note(self, event: str) -> None:
        # Marks in the broker's log make a fault test's stops and starts easy to find.
        with open(self.log_path, "ab") as log:
            log.write(f"=== passpost {time.strftime('%H:%M:%S')}: {event}\n".encode())

    def _failure(self, reason: str) -> LocalKafkaError:
        return LocalKafkaError(
            f"local Kafka on 127.0.0.1:{self._port}: {reason}; log {self.log_path}, last lines:\n"
            f"{_tail(self.log_path)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m passpost.localkafka", description="A local Kafka broker for development."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download Kafka's jars into the cache and print their folder")
    fetch.add_argument("--verbose", "-v", action="store_true", help="show Maven's output")
    fetch.add_argument(
        "--jars-only", action="store_true",
        help="skip the trial start that prepares the class archive and storage template",
    )
    run = commands.add_parser("run", help="start a broker and keep it up until Ctrl-C")
    run.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: a free one)")
    run.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temp dir)")
    run.add_argument("--secure", action="store_true",
                     help="add SASL_PLAINTEXT, SSL and SASL_SSL listeners and print how to reach them")
    options = parser.parse_args(argv)
    try:
        if options.command == "fetch":
            return _fetch(verbose=options.verbose, jars_only=options.jars_only)
        return _run(options.port, options.workdir, secure=options.secure)
    except LocalKafkaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _fetch(*, verbose: bool, jars_only: bool) -> int:
    started = time.monotonic()
    if not kafka_jars_cached():
        print(f"Downloading Kafka {KAFKA_VERSION}'s jars from Maven Central (once; they are cached)...", flush=True)
    libs = ensure_kafka_jars(quiet=not verbose)
    print(f"Kafka {KAFKA_VERSION} jars in {libs} ({time.monotonic() - started:.1f} s)")
    prepared = (libs.parent / _STORAGE_TEMPLATE).is_dir() and _class_archive(libs, _java()).exists()
    if not (jars_only or prepared):
        # One clean start and stop leaves the storage template and the class archive in
        # the cache, so the first broker of a CI run starts as fast as the later ones.
        started = time.monotonic()
        with LocalKafka():
            pass
        print(f"trial broker started and stopped ({time.monotonic() - started:.1f} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(port: int | None, workdir: Path | None, *, secure: bool = False) -> int:
    # SIGTERM should clean up like Ctrl-C does rather than orphan the JVM.
    signal.signal(signal.SIGTERM, _interrupt)
    kafka = LocalKafka(workdir, port=port, listeners=SECURE_LISTENERS if secure else ())
    try:
        started = time.monotonic()
        kafka.start()
        print(f"Kafka {KAFKA_VERSION} serving at {kafka.bootstrap_servers} "
              f"(started in {time.monotonic() - started:.1f} s; log {kafka.log_path})", flush=True)
        for name in kafka.listeners:
            variables = kafka.client_env(name, client_certificate=name == "SSL")
            print(f"{name} at {kafka.bootstrap_servers_for(name)}:", " ".join(
                f"{key}={value}" for key, value in variables.items()), flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while kafka.running:
            time.sleep(0.5)
        print(f"the broker exited; log {kafka.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        kafka.close()


if __name__ == "__main__":
    sys.exit(main())
