"""``python -m passpost_dev.kafka`` (passpost_dev/kafka/cli.py), which `make kafka-jars` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from passpost_dev.kafka import KAFKA_VERSION


def kafka_cli(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passpost_dev.kafka", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PASSPOST_CACHE_DIR": str(cache), **env})


def test_fetch_with_the_jars_cached_prints_their_folder_and_downloads_nothing(tmp_path: Path) -> None:
    home = tmp_path / f"kafka-{KAFKA_VERSION}"
    home.mkdir()
    (home / "libs.complete").write_text("kafka_2.13.jar\n")
    result = kafka_cli("fetch", "--jars-only", cache=tmp_path, PATH="")  # no mvn, no java: none is needed
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Kafka {KAFKA_VERSION} jars in {home / 'libs'} (")
    assert "Downloading" not in result.stdout


def test_a_failure_is_one_line_and_status_1(tmp_path: Path) -> None:
    result = kafka_cli("fetch", cache=tmp_path, PATH="", JAVA_HOME="")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: Java 17+ is needed to run the Kafka broker, but `java` is not on PATH"]
