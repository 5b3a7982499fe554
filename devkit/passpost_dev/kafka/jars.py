"""Kafka's broker jars, resolved from Maven Central with ``mvn`` once and cached.

``<cache>/kafka-<version>/libs`` holds the broker's jars and every runtime dependency; a
completion marker beside it says the folder is whole. The same folder later holds what only
makes start-up faster (the formatted storage template, the class-data-sharing archives).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from passpost_dev.cache import cache_root, exclusive_lock
from passpost_dev.kafka.errors import LocalKafkaError, java_executable, require_executable

KAFKA_VERSION = "4.1.1"
# Kafka's poms depend on slf4j-api 1.7 and log4j-core but ship no binding between them
# (the distribution tarball adds it), so without this jar the broker would log nothing.
LOG4J_VERSION = "2.24.3"
# Pinned because Maven 3.8's default dependency plugin (2.8) predates the options we use.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_COMPLETE_MARKER = "libs.complete"


def kafka_home(cache_dir: Path | None = None) -> Path:
    """The cache folder of this Kafka version: ``libs/`` and what is derived from it."""
    return cache_root(cache_dir) / f"kafka-{KAFKA_VERSION}"


def kafka_jars_cached(cache_dir: Path | None = None) -> bool:
    """Whether ``ensure_kafka_jars`` has nothing to download."""
    return (kafka_home(cache_dir) / _COMPLETE_MARKER).exists()


def ensure_kafka_jars(cache_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Return the folder holding Kafka's broker jars and every runtime dependency.

    The first call resolves them with Maven (into ``<cache>/kafka-<version>/libs``); later
    calls only check the completion marker, so they cost a ``stat``.
    """
    home = kafka_home(cache_dir)
    libs = home / "libs"
    marker = home / _COMPLETE_MARKER
    if marker.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    # Parallel test processes (or CI jobs sharing a cache) would otherwise download into
    # the same folder at once; the loser of the lock finds the marker and returns.
    with exclusive_lock(home / ".lock"):
        if marker.exists():
            return libs
        java_executable()  # Maven needs it too, and "java is missing" is the clearer message
        mvn = require_executable("mvn", "Maven (mvn) is needed to download Kafka's jars")
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
                f"(exit {result.returncode}): {maven_error(result.stdout)}"
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


def maven_error(output: str | None) -> str:
    """The line of Maven's captured ``output`` that says why it failed (its first ``[ERROR]``)."""
    if output is None:
        return "see Maven's output above"
    # Maven 3.8 writes colour codes even in batch mode with colours turned off.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[ERROR]") and len(line) > 8]
    return (errors or lines or ["Maven printed nothing"])[0]
