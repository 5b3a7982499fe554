"""The jars Spark needs to read the lakehouse table: Iceberg's Spark runtime and PostgreSQL's JDBC driver (the
catalog), resolved from Maven Central with ``mvn`` once and cached beside Kafka's (``~/.cache/passpost``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from passpost_dev.cache import cache_root, exclusive_lock
from passpost_dev.kafka.errors import require_executable
from passpost_dev.kafka.jars import DEPENDENCY_PLUGIN, maven_error

# Iceberg's runtime for Spark 4.0 (Scala 2.13), the PySpark the test extra pins.
ICEBERG_VERSION = "1.10.0"
SPARK_RUNTIME = f"iceberg-spark-runtime-4.0_2.13-{ICEBERG_VERSION}.jar"
POSTGRESQL_JDBC = "42.7.14"
_DEPENDENCIES = (("org.apache.iceberg", "iceberg-spark-runtime-4.0_2.13", ICEBERG_VERSION),
                 ("org.postgresql", "postgresql", POSTGRESQL_JDBC))


def spark_jars(cache_dir: Path | None = None) -> list[Path]:
    home = cache_root(cache_dir) / f"spark-iceberg-{ICEBERG_VERSION}"
    jars, marker = home / "jars", home / "jars.complete"
    if not marker.exists():
        home.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(home / ".lock"):
            if not marker.exists():
                _fetch(home, jars)
                marker.write_text("\n".join(sorted(jar.name for jar in jars.glob("*.jar"))) + "\n")
    return sorted(jars.glob("*.jar"))


def _fetch(home: Path, jars: Path) -> None:
    mvn = require_executable("mvn", "Maven (mvn) is needed to download the Spark test's jars")
    partial = home / "jars.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(jars, ignore_errors=True)
    entries = "".join(f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
                      f"<version>{version}</version></dependency>" for group, artifact, version in _DEPENDENCIES)
    pom = home / "pom.xml"
    pom.write_text('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                   "<groupId>passpost.local</groupId><artifactId>spark-iceberg</artifactId>"
                   f"<version>{ICEBERG_VERSION}</version><packaging>pom</packaging>"
                   f"<dependencies>{entries}</dependencies></project>\n")
    result = subprocess.run([mvn, "-q", "-B", "-U", "--no-transfer-progress", "-Dstyle.color=never", "-f", str(pom),
                             f"{DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                             f"-DoutputDirectory={partial}"],
                            cwd=home, stdin=subprocess.DEVNULL, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    if result.returncode != 0 or not (partial / SPARK_RUNTIME).exists():
        raise RuntimeError(f"mvn could not resolve Iceberg's Spark runtime: {maven_error(result.stdout)}")
    partial.rename(jars)
