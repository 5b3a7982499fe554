"""passpost-dev's pytest plugin (passpost_dev/pytest_plugin.py): registered by installing the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TEST = '''
def test_bootstrap(kafka_bootstrap):
    assert kafka_bootstrap == "broker.example:9092"
'''


def test_the_plugin_is_loaded_from_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("passpost_dev")
    assert plugin is not None and plugin.__name__ == "passpost_dev.pytest_plugin"


def test_kafka_bootstrap_is_the_configured_broker_when_one_is_set(tmp_path: Path) -> None:
    (tmp_path / "test_elsewhere.py").write_text(TEST)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": "broker.example:9092"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_a_container_engine_the_container_path_steps_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import sys

    from passpost_dev.pytest_plugin import container_kafka

    monkeypatch.setitem(sys.modules, "docker", None)  # not installed (or, alike, no engine): no container
    with contextlib.ExitStack() as stack:
        assert container_kafka(stack) is None
