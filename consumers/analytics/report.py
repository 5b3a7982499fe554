"""``passpost report``: a terminal summary of the analytics store."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from passpost.consumers.analytics.store import open_store
from passpost.settings import Settings


def print_report(settings: Settings, console: Console | None = None, now: datetime | None = None) -> None:
    console = console or Console()
    store = open_store(settings.analytics_dsn, read_only=True)
    try:
        summary = store.summary(now or datetime.now(UTC))
    finally:
        store.close()
    console.print(f"[bold]{summary.total}[/bold] postbacks in {settings.analytics_dsn.split('@')[-1]}")

    outcomes = Table("outcome", "postbacks", title="By outcome", title_justify="left")
    for outcome, count in summary.by_outcome:
        outcomes.add_row(outcome, str(count))
    codes = Table("status code", "outcome", "postbacks", title="By status code", title_justify="left")
    for code, outcome, count in summary.by_status_code:
        codes.add_row(code, outcome, str(count))
    hours = Table("hour (UTC)", "postbacks", "failures", title="Last 24 hours", title_justify="left")
    for hour, count, failures in summary.last_24h:
        hours.add_row(f"{hour:%Y-%m-%d %H:00}", str(count), str(failures))
    failures_table = Table("received (UTC)", "status code", "origin", "serial number", "custom pass id",
                           title="Latest failures", title_justify="left")
    for received, code, origin, serial, custom in summary.latest_failures:
        failures_table.add_row(f"{received:%Y-%m-%d %H:%M:%S}", code, origin, serial or "", custom or "")
    for table in (outcomes, codes, hours, failures_table):
        console.print(table)
