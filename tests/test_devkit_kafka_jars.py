"""Kafka's jars from Maven Central, cached (passpost_dev/kafka/jars.py): a missing tool or a Maven failure is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from passpost_dev.kafka import KAFKA_VERSION, LocalKafkaError, ensure_kafka_jars, kafka_jars_cached, maven_error


@pytest.mark.parametrize("missing", ["java", "mvn"])
def test_a_missing_tool_is_a_one_line_error(missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in {"java", "mvn"} - {missing}:
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError) as raised:
        ensure_kafka_jars(tmp_path / "cache")
    assert f"`{missing}` is not on PATH" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_complete_cache_is_used_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not kafka_jars_cached(tmp_path)
    home = tmp_path / f"kafka-{KAFKA_VERSION}"
    home.mkdir()
    (home / "libs.complete").write_text("kafka_2.13.jar\n")
    monkeypatch.setenv("PATH", "")  # neither java nor mvn: nothing may be run
    assert kafka_jars_cached(tmp_path)
    assert ensure_kafka_jars(tmp_path) == home / "libs"


def test_maven_error_is_its_first_error_line_without_colours() -> None:
    output = ("[INFO] Scanning\n\x1b[1;31m[ERROR]\x1b[m Failed to execute goal: could not resolve\n"
              "[ERROR] second\n")
    assert maven_error(output) == "[ERROR] Failed to execute goal: could not resolve"
    assert maven_error("just this\n") == "just this"
    assert maven_error("") == "Maven printed nothing"
    assert maven_error(None) == "see Maven's output above"
