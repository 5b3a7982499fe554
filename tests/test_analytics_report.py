"""`passpost report`'s tables (consumers/analytics/report.py): whole values, whatever the output is."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from passpost import settings as settings_module
from passpost.consumers.analytics import report
from passpost.consumers.analytics.store import Summary

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
SERIAL = "5294CE37878AE-112613-113711-0000000001"
ORIGIN = "https://skycore.example/passes/api/v2/postbacks/callback"
SUMMARY = Summary(total=1, by_outcome=[("FAILURE", 1)], by_status_code=[("N802", "FAILURE", 1)],
                  last_24h=[(NOW, 1, 1)], latest_failures=[(NOW, "N802", ORIGIN, SERIAL, "custom-pass-identifier-1")],
                  since=NOW, latest=NOW)


@pytest.fixture(autouse=True)
def summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "read_summary", lambda settings, now: SUMMARY)


def test_piped_or_captured_output_is_not_cut_to_80_columns(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`make report | less`, a file, a CI log: no terminal to measure, so rich would assume 80 columns and end
    the latest failures' serial numbers in "…"."""
    monkeypatch.delenv("COLUMNS", raising=False)
    report.print_report(settings_module.load({}))
    printed = capsys.readouterr().out
    assert SERIAL in printed and ORIGIN in printed
    assert "…" not in printed


def test_a_narrow_terminal_folds_values_rather_than_cutting_them() -> None:
    output = io.StringIO()
    report.print_report(settings_module.load({}), Console(file=output, width=70))
    printed = output.getvalue()
    assert "…" not in printed
    assert max(len(line) for line in printed.splitlines()) <= 70
    rows = [line.split("│") for line in printed.splitlines() if line.count("│") == 6]  # the latest failures
    assert "".join(row[4].strip() for row in rows) == SERIAL
    assert "".join(row[3].strip() for row in rows) == ORIGIN


def test_columns_set_is_the_width(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "90")
    report.print_report(settings_module.load({}))
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 90 and "…" not in printed
