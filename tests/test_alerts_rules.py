"""Alert rules (consumers/alerts/rules.py): the built-in defaults and rules files."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from passpost import settings
from passpost.consumers.alerts.rules import RulesError, RuleSet, Severity, load_rules
from passpost.schemas.event import PassPostback, classify
from passpost.settings import SettingsError

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def postback(code: str, *, at: datetime = T0, origin: str = "GENERATE_PASS", n: int = 0) -> PassPostback:
    """An event as the ingress makes it: the outcome comes from the status code."""
    return PassPostback(event_id=f"{code}-{origin}-{n}-{at.isoformat()}", origin=origin, status_code=code,
                        outcome=classify(code), serial_number=f"SN{n}", reference_value="someone@example.com",
                        received_at=at)


@pytest.mark.parametrize(("code", "alertname", "severity"), [
    ("N811", "PasspostOutOfCredits", Severity.CRITICAL),
    ("N803", "PasspostGenerationLimit", Severity.CRITICAL),
    ("N802", "PasspostPassFailure", Severity.WARNING),
    ("E42", "PasspostPassFailure", Severity.WARNING),
    ("n811", "PasspostOutOfCredits", Severity.CRITICAL),
])
def test_failures_alert_with_their_severity(code: str, alertname: str, severity: Severity) -> None:
    match = RuleSet().match(postback(code))
    assert match is not None
    assert (match.alertname, match.severity, match.status_code) == (alertname, severity, code.upper())
    assert match.labels == {"alertname": alertname, "origin": "GENERATE_PASS", "status_code": code.upper(),
                            "severity": severity.value}


def test_n801_never_alerts() -> None:
    rules = RuleSet()
    assert all(rules.match(postback("N801", n=n)) is None for n in range(100))


def test_an_unknown_code_alerts_and_says_the_vendor_changed_something() -> None:
    match = RuleSet().match(postback("X999"))
    assert match is not None and match.alertname == "PasspostUnknownStatusCode"
    assert match.severity is Severity.WARNING and "vendor changed something" in match.summary
    assert "X999" in match.summary


def test_n802_escalates_above_its_rate_and_calms_down_after_the_window() -> None:
    rules = RuleSet()
    severities = [rules.match(postback("N802", at=T0 + timedelta(seconds=i), n=i)).severity for i in range(12)]
    assert severities == [Severity.WARNING] * 9 + [Severity.CRITICAL] * 3  # the 10th within 60 s
    later = rules.match(postback("N802", at=T0 + timedelta(minutes=5), n=99))
    assert later is not None and later.severity is Severity.WARNING
    # The window is per origin: another origin's single N802 is only a warning.
    other = RuleSet()
    for i in range(9):
        other.match(postback("N802", origin="A", n=i))
    assert other.match(postback("N802", origin="B")).severity is Severity.WARNING


def test_a_toml_file_overrides_some_codes_and_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
[[rules]]
codes = ["N802"]
severity = "critical"
summary = "Any N802 pages ({origin})"

[[rules]]
codes = ["E9*"]
alert = false
""")
    rules = load_rules(path)
    assert rules.match(postback("N802")).severity is Severity.CRITICAL
    assert rules.match(postback("N802")).summary == "Any N802 pages (GENERATE_PASS)"
    assert rules.match(postback("E901")) is None
    assert rules.match(postback("E100")).severity is Severity.WARNING
    assert rules.match(postback("N811")).severity is Severity.CRITICAL  # a default
    assert rules.match(postback("N801")) is None


def test_a_yaml_file_can_replace_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("""
defaults: false
rules:
  - outcomes: [FAILURE]
    severity: info
    escalate: {count: 3, window_seconds: 10, severity: critical}
""")
    rules = load_rules(path)
    assert rules.match(postback("X999")) is None  # the UNKNOWN default is gone
    assert [rules.match(postback("N811", n=n)).severity for n in range(3)] == [
        Severity.INFO, Severity.INFO, Severity.CRITICAL]


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("bad.toml", "[[rules]\ncodes = 1", "not valid TOML"),
    ("bad.yaml", "rules: [", "not valid YAML"),
    ("keys.toml", "[[rules]]\ncodes = ['N802']\nsevertiy = 'critical'", "rule 1: unknown key 'severtiy'"),
    ("sev.toml", "[[rules]]\ncodes = ['N802']\nseverity = 'loud'", "rule 1: `severity` 'loud' is not one of"),
    ("none.toml", "[[rules]]\nseverity = 'critical'", "rule 1: needs `codes` or `outcomes`"),
    ("outcome.toml", "[[rules]]\noutcomes = ['BROKEN']", "`outcomes` 'BROKEN' is not one of"),
    ("text.toml", "[[rules]]\ncodes = ['N802']\nsummary = 'code {code}'", "may use only {status_code}"),
    ("rate.toml", "[[rules]]\ncodes = ['N802']\nescalate = {count = 0, window_seconds = 5}", "escalate.count"),
    ("top.toml", "rule = []", "unknown key 'rule'"),
])
def test_a_bad_rules_file_is_one_line_naming_the_file(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_a_missing_rules_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"^\S+missing\.toml: .*No such file"):
        load_rules(tmp_path / "missing.toml")


def test_a_bad_rules_file_stops_passpost_consume_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rules]]\ncodes = ['N802']\nseverity = 'loud'\n")
    result = subprocess.run([sys.executable, "-m", "passpost", "consume", "alerts"], capture_output=True, text=True,
                            env={**os.environ, "PASSPOST_ALERT_RULES_FILE": str(path)}, timeout=30)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"PASSPOST_ALERT_RULES_FILE: {path}: rule 1: `severity` 'loud' is not one of" in line


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("PASSPOST_ALERTMANAGER_URL", "alertmanager:9093", "is not an http:// or https:// URL"),
    ("PASSPOST_ALERT_WEBHOOK_FORMAT", "teams", "is not one of alertmanager, slack"),
    ("PASSPOST_ALERT_RESOLVE_AFTER_SECONDS", "0", "positive number of seconds"),
])
def test_alert_settings_are_checked(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: .*{fragment}"):
        settings.load({name: value})
