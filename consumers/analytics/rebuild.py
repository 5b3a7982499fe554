"""``passpost rebuild analytics``: empty the store, replay the events topic from its start.

The store is the truth about offsets, so emptying it (rows and offsets in one
transaction) is all it takes for the runtime to start every partition at the beginning.
The replay stops at the end offsets the topic had when it began; events arriving later
are the running consumer's. Stop `passpost consume analytics` first (DuckDB allows one
writer anyway; on PostgreSQL a running consumer would race the replay harmlessly but
make the progress bar lie).
"""

from __future__ import annotations

import asyncio

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from passpost.consumers.analytics import AnalyticsConsumer
from passpost.consumers.analytics.store import open_store
from passpost.consumers.runtime import Runner
from passpost.kafka import topic_bounds
from passpost.settings import Settings


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} events/s")


def _empty(settings: Settings) -> None:
    store = open_store(settings.analytics_dsn)
    try:
        store.ensure_schema()
        store.truncate()
    finally:
        store.close()


async def rebuild(settings: Settings, *, show_progress: bool = True) -> int:
    """Return how many records were replayed."""
    beginning, end = await topic_bounds(settings)
    await asyncio.to_thread(_empty, settings)
    total = sum(end[tp] - beginning[tp] for tp in end)
    runner = Runner(AnalyticsConsumer(settings), settings, health_port=0)
    todo = {tp: offset for tp, offset in end.items() if offset > beginning[tp]}

    def done() -> int:
        return sum(min(runner.written.get(tp, beginning[tp]), end[tp]) - beginning[tp] for tp in end)

    columns = (TextColumn("rebuilding analytics"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               _Rate(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("rebuild", total=total)

        def finished() -> bool:
            progress.update(task, completed=done())
            return all(runner.written.get(tp, 0) >= offset for tp, offset in todo.items())

        if todo:
            await runner.run(until=finished)
    return total
