"""A real single-node Apache Kafka broker (KRaft) run as a local JVM process.

Tests and ``passpost dev`` need a genuine broker, not a fake, and this machine may have
no Docker engine. Kafka's own jars are resolved from Maven Central with ``mvn`` once,
cached (``jars.py``), and started with ``java`` (``jvm.py``); nothing else is installed.

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
``openssl`` makes in the broker's folder (``certificates.py``).

The cache (``passpost_dev.cache``) holds, per Kafka version, ``libs/`` (the jars), a
formatted KRaft storage template (``storage.py``) and a class-data-sharing archive; the
last two only make start-up faster and are rebuilt when missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

from passpost_dev.kafka import storage
from passpost_dev.kafka.certificates import Certificates, make_certificates
from passpost_dev.kafka.config import NODE_ID, SASL_MECHANISMS, SECURE_LISTENERS, SSL_CLIENT_AUTH, BrokerConfig, Quorum
from passpost_dev.kafka.errors import LocalKafkaError, java_executable
from passpost_dev.kafka.jars import ensure_kafka_jars
from passpost_dev.kafka.jvm import BrokerProcess, class_archive, java_command, tail
from passpost_dev.kafka.lifecycle import Started
from passpost_dev.kafka.metadata import PROBE_ERRORS, request_metadata
from passpost_dev.ports import free_port


def _cleanup(process: BrokerProcess, owned_dir: Path | None) -> None:
    process.kill()
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)


class LocalKafka(Started):
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
        extra_properties: Mapping[str, object] | None = None,
        node_id: int = NODE_ID,
        quorum: Quorum | None = None,
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
        self.extra_properties = dict(extra_properties or {})  # server.properties set over the defaults
        # A node of a LocalKafkaCluster shares its quorum (and cluster id) with the others.
        if quorum is not None and node_id not in quorum.voters:
            raise ValueError(f"node {node_id} is not one of the quorum's voters {sorted(quorum.voters)}")
        self.node_id = node_id
        self.quorum = quorum
        self._listener_ports: dict[str, int] = {}
        self._owns_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="passpost-kafka-")) if workdir is None else Path(workdir)
        self.heap = heap
        self.log_level = log_level
        self._cache_dir = cache_dir
        self._use_class_archive = class_archive
        self._port = port
        self._controller_port: int | None = None if quorum is None else quorum.voters[node_id]
        self._process = BrokerProcess()
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
        if not self._uses_tls:
            raise LocalKafkaError("this broker has no SSL or SASL_SSL listener, hence no certificates")
        return Certificates.in_folder(self.workdir / "tls")

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
        return self._process.running

    def start(self, timeout: float = 60) -> LocalKafka:
        """Start the broker (formatting its storage the first time) and return once it
        answers metadata requests. Starting a running broker does nothing."""
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        self.launch(deadline)
        self.wait_until_serving(deadline)
        return self

    def launch(self, deadline: float) -> None:
        """Start the JVM without waiting for it to serve: a cluster's nodes must all be
        launched before any of them can elect a controller. ``wait_until_serving`` follows."""
        self._process.kill()  # reaps a broker that exited by itself since
        java = java_executable()
        libs = ensure_kafka_jars(self._cache_dir)
        config = self._config()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._uses_tls and not self.ca_file.exists():
            make_certificates(self.workdir / "tls")
        config_file = config.write()
        tool_sharing, broker_sharing = self._class_sharing(libs, java)
        if not (config.data_dir / "meta.properties").exists():
            self._prepare_storage(config, java, libs, tool_sharing, config_file, deadline)
        self._note(f"starting the broker on {self.bootstrap_servers}")
        with open(self.log_path, "ab") as log:
            self._process.popen = subprocess.Popen(
                java_command(java, libs, self.workdir, self.heap, broker_sharing, "kafka.Kafka", str(config_file)),
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the Python process must not reach the
                # JVM directly, or it would shut down while we still think it is serving.
                start_new_session=True,
            )

    def wait_until_serving(self, deadline: float) -> None:
        """Return once this node answers metadata requests and lists itself (registered, unfenced)."""
        try:
            self._wait_until_serving(storage.cluster_id_of(self._config_data_dir), deadline)
        except BaseException:
            self._process.kill()
            raise

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
        if self.running:
            self._note("pausing the broker (SIGSTOP)")
            self._process.send(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT)."""
        if self.running:
            self._note("resuming the broker (SIGCONT)")
            self._process.send(signal.SIGCONT)

    def restart(self, timeout: float = 60) -> LocalKafka:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._finalizer.detach()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        address = f"127.0.0.1:{self._port}" if self._port else "no address yet"
        return f"<LocalKafka {address} {state} in {self.workdir}>"

    @property
    def _config_data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def _uses_tls(self) -> bool:
        return any(name.endswith("SSL") for name in self.listeners)

    def _config(self) -> BrokerConfig:
        """This start's configuration; ports picked at the first start are kept for every later one."""
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
        assert self._controller_port is not None
        return BrokerConfig(
            workdir=self.workdir, port=self._port, controller_port=self._controller_port,
            listener_ports={name: self._listener_ports[name] for name in self.listeners},
            sasl_username=self.sasl_username, sasl_password=self.sasl_password,
            ssl_client_auth=self.ssl_client_auth, log_level=self.log_level,
            certificates=self.certificates if self._uses_tls else None,
            extra_properties=self.extra_properties, node_id=self.node_id, quorum=self.quorum,
        )

    def _class_sharing(self, libs: Path, java: str) -> tuple[list[str], list[str]]:
        """JVM flags for the class archive: (for the storage tool, for the broker)."""
        if not self._use_class_archive:
            return [], []
        archive = class_archive(libs, java)
        if archive.exists():
            use = [f"-XX:SharedArchiveFile={archive}"]
            return use, use
        # None for this JVM yet: this broker writes one when it stops cleanly.
        partial = archive.with_name(f"{archive.name}.{os.getpid()}.{id(self)}.partial")
        self._process.archive_dump = (partial, archive)
        return [], [f"-XX:ArchiveClassesAtExit={partial}"]

    def _prepare_storage(self, config: BrokerConfig, java: str, libs: Path, sharing: list[str], config_file: Path,
                         deadline: float) -> None:
        template = storage.template_dir(libs, config.scram_arguments())
        if template.is_dir():
            storage.copy_formatted_storage(template, config.data_dir, node_id=self.node_id,
                                           cluster_id=None if self.quorum is None else self.quorum.cluster_id)
            return
        self._format(config, java, libs, sharing, config_file, deadline)
        # Keep this broker's freshly formatted storage as the template for later ones.
        storage.keep_as_template(config.data_dir, template, owner=f"{os.getpid()}.{id(self)}")

    def _format(self, config: BrokerConfig, java: str, libs: Path, sharing: list[str], config_file: Path,
                deadline: float) -> None:
        cluster_id = storage.kafka_uuid() if self.quorum is None else self.quorum.cluster_id
        command = java_command(
            java, libs, self.workdir, self.heap, sharing, "kafka.tools.StorageTool",
            "format", "--cluster-id", cluster_id, "--config", str(config_file), "--ignore-formatted",
            *config.scram_arguments(),
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
                answer = request_metadata("127.0.0.1", self._port, timeout=2.0)
                # The cluster id tells our broker from another process on a fixed port.
                if answer.cluster_id != cluster_id:
                    last_error = f"port {self._port} answers for cluster {answer.cluster_id}, not ours"
                elif self.node_id in answer.brokers:
                    return
                else:
                    last_error = "broker not registered yet"
            except PROBE_ERRORS as error:
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
            f"{tail(self.log_path)}"
        )
