"""One ``PasspostError`` base (passpost/errors.py), caught once by the CLI, and dependencies that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest

from passpost.cli import _run
from passpost.consumers.alerts.rules import RulesError
from passpost.consumers.alerts.store import StateStoreError
from passpost.consumers.analytics.store import StoreUnavailable
from passpost.consumers.runtime import CannotRun, UnknownConsumer
from passpost.errors import ConfigurationError, PasspostError
from passpost.ingest.server import PortUnavailable
from passpost.kafka import KafkaUnavailable
from passpost.schemas.registry_errors import RegistryUnavailable
from passpost.settings import SettingsError
from passpost_dev.kafka import LocalKafkaError

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(("error", "status"), [
    (SettingsError("PASSPOST_PORT: 'x' is not a whole number"), 2),
    (RulesError("PASSPOST_ALERT_RULES_FILE: rules.toml: rule 1: bad"), 2),
    (UnknownConsumer("no consumer named 'x' (registered: alerts, analytics)"), 2),
    (StateStoreError("alerts.json: not a passpost alerts state file (Expecting value)"), 1),
    (StoreUnavailable("cannot connect to PostgreSQL: refused"), 1),
    (CannotRun("PASSPOST_CONSUMER_PORT: port 9100 is already in use"), 1),
    (KafkaUnavailable("no broker answered at localhost:9092"), 1),
    (PortUnavailable("PASSPOST_PORT: port 8000 on 127.0.0.1 is already in use"), 1),
    (LocalKafkaError("java is not installed"), 1),
    (RegistryUnavailable("schema registry http://registry:8080 unreachable: ConnectError"), 1),
])
def test_any_passpost_error_from_any_command_is_one_line_with_its_status(
        error: PasspostError, status: int, capsys: pytest.CaptureFixture[str]) -> None:
    @click.command()
    def failing() -> None:
        raise error

    assert isinstance(error, PasspostError) and error.exit_code == status
    assert isinstance(error, ConfigurationError) == (status == 2)
    assert _run(failing.main, []) == status
    assert capsys.readouterr().err == f"passpost: error: {error}\n"


def _imports(relative: str) -> set[str]:
    """Every module ``relative`` imports, as installed (``passpost.…``), top-level and in functions alike."""
    tree = ast.parse((ROOT / relative).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(("module", "must_not_import"), [
    # Settings are read by everything, so they import nothing of the parts that read them.
    ("passpost/settings.py", ("passpost.consumers", "passpost.ingest", "passpost.schemas")),
    ("passpost/errors.py", ("passpost.",)),
    ("passpost/kafka.py", ("passpost.consumers", "passpost.ingest")),
    # The runtime and its test kit know no particular consumer.
    ("consumers/testing.py", ("passpost.consumers.analytics", "passpost.consumers.alerts")),
    *((f"consumers/runtime/{path.name}", ("passpost.consumers.analytics", "passpost.consumers.alerts",
                                           "passpost.ingest"))
      for path in sorted((ROOT / "consumers" / "runtime").glob("*.py"))),
    # The CLI catches PasspostError, not a store's or a server's own error type.
    ("passpost/cli.py", ("passpost.consumers.analytics.store", "passpost.consumers.alerts.store",
                         "passpost.consumers.runtime.errors", "passpost.ingest.server.PortUnavailable",
                         "passpost.schemas.registry_errors", "passpost.kafka.KafkaUnavailable")),
])
def test_dependencies_point_one_way(module: str, must_not_import: tuple[str, ...]) -> None:
    wrong = sorted(name for name in _imports(module) if name.startswith(must_not_import))
    assert wrong == [], f"{module} imports {wrong}"


def test_the_rules_file_is_parsed_once_per_process(tmp_path: Path) -> None:
    from passpost.consumers.alerts import rules

    path = tmp_path / "rules.toml"
    path.write_text("[[rules]]\ncodes = ['N802']\nseverity = 'critical'\n")
    rules._parse_file.cache_clear()
    first, second = rules.rules_setting(str(path)), rules.rules_setting(str(path))
    assert rules._parse_file.cache_info().misses == 1
    assert first is not second and first.rules == second.rules  # each RuleSet keeps windows of its own


def test_describe_error_is_one_line_led_by_the_type_unless_the_text_names_it() -> None:
    from passpost.errors import describe_error

    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ConnectionResetError("peer\n  reset")) == "ConnectionResetError: peer reset"
    assert describe_error(ValueError("ValueError: already named")) == "ValueError: already named"
