"""``passpost report``: a terminal summary of the analytics store.

On DuckDB while the analytics consumer runs (it holds the file), the consumer answers
instead (``serving.py``): same query, same summary.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Column, Table

from passpost.consumers.analytics import serving
from passpost.consumers.analytics.store import StoreLocked, Summary, open_store
from passpost.settings import Settings


def read_summary(settings: Settings, now: datetime) -> Summary:
    try:
        store = open_store(settings.analytics_dsn, read_only=True)
    except StoreLocked as locked:
        database = serving.duckdb_path(settings.analytics_dsn)
        assert database is not None  # only DuckDB locks
        return serving.ask(database, now, locked)
    try:
        return store.summary(now)
    finally:
        store.close()


# Wider than any table of the report: where there is no terminal, each table takes its own width.
_NO_LIMIT = 10_000


def report_console() -> Console:
    """Standard output at the terminal's width (``COLUMNS`` if set). Piped or captured (``make report | less``,
    a file, a CI log) there is no width to keep to, and rich would assume 80 columns and cut the tables."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=_NO_LIMIT)
    return console


def print_report(settings: Settings, console: Console | None = None, now: datetime | None = None) -> None:
    """The summary as tables. Identifiers are never cut: in a terminal narrower than a table they fold."""
    console = console or report_console()
    summary = read_summary(settings, now or datetime.now(UTC))
    print_summary(summary, settings.analytics_dsn.split('@')[-1], console)


def print_summary(summary: Summary, where: str, console: Console) -> None:
    """One store's summary as tables (the analytics store's, or the Iceberg table's)."""
    console.print(f"[bold]{summary.total}[/bold] postbacks in {where}")

    outcomes = Table("outcome", "postbacks", title="By outcome", title_justify="left")
    for outcome, count in summary.by_outcome:
        outcomes.add_row(outcome, str(count))
    codes = Table("status code", "outcome", "postbacks", title="By status code", title_justify="left")
    for code, outcome, count in summary.by_status_code:
        codes.add_row(code, outcome, str(count))
    hours = Table("hour (UTC)", "postbacks", "failures", title="Last 24 hours", title_justify="left",
                  caption=stale_note(summary), caption_justify="left")
    for hour, count, failures in summary.last_24h:
        hours.add_row(f"{hour:%Y-%m-%d %H:00}", str(count), str(failures))
    failures_table = Table("received (UTC)", "status code", *(Column(name, overflow="fold") for name in (
        "origin", "serial number", "custom pass id")), title="Latest failures", title_justify="left")
    for received, code, origin, serial, custom in summary.latest_failures:
        failures_table.add_row(f"{received:%Y-%m-%d %H:%M:%S}", code, origin, serial or "", custom or "")
    for table in (outcomes, codes, hours, failures_table):
        console.print(table)


def stale_note(summary: Summary) -> str | None:
    """Why "Last 24 hours" is empty though the store is not: every postback is older than the window."""
    if summary.latest is None or summary.latest >= summary.since:
        return None
    return (f"Nothing in the last 24 hours: the latest postback is from {summary.latest:%Y-%m-%d %H:00} UTC "
            "(the hour the vendor generated it, else when it was received).")
