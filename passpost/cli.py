"""The ``passpost`` command.

Every mistake a user can make here (a bad setting, a bad argument, an unreachable
Kafka) ends with one line on stderr naming it and a non-zero status: 2 for settings and
arguments, 1 for an environment that does not work. No tracebacks for those. Modules raise
a ``PasspostError`` (``passpost/errors.py``) where they find the problem; ``_run`` below
catches it, once, for every command.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from passpost import settings as settings_module
from passpost.errors import ConfigurationError, PasspostError
from passpost.kafka import create_topics
from passpost.settings import Settings

log = logging.getLogger("passpost")


def _settings(**overrides: Any) -> Settings:
    settings = settings_module.load()
    settings = settings.replace(**{key: value for key, value in overrides.items() if value is not None})
    from passpost.logs import configure

    configure(settings.log_format, settings.log_level)
    for name in settings_module.unknown_variables():
        log.warning("ignoring %s: passpost has no such setting (a typo?)", name)
    if settings.alert_rules_file is not None:
        # Parsed now, so a bad rules file stops every command at start-up with one line.
        from passpost.consumers.alerts.rules import rules_setting

        rules_setting(settings.alert_rules_file)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="passpost")
def cli() -> None:
    """Skycore pass postbacks into Kafka, and consumers that make use of them.

    Settings come from PASSPOST_* environment variables (see the README).
    """


@cli.command()
@click.option("--host", help="Address to listen on [PASSPOST_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on [PASSPOST_PORT, default 8000].")
@click.option("--workers", type=click.IntRange(1, 64), help="Processes on the port [PASSPOST_WORKERS, default 1].")
def serve(host: str | None, port: int | None, workers: int | None) -> int:
    """Run the HTTP ingress (POST /postbacks/passes)."""
    settings = _settings(host=host, port=port, workers=workers)
    settings_module.require_credentials(settings)
    from passpost.ingest.server import run

    return run(settings)


@cli.command()
def topics() -> None:
    """Create the events and dead-letter topics (idempotent); report what each one is."""
    settings = _settings()
    from passpost.topic_metadata import describe_topics

    outcome = asyncio.run(create_topics(settings))
    # What the cluster has, not what was asked for: an existing topic keeps its own layout.
    actual = asyncio.run(describe_topics(settings, outcome, wait_seconds=5)).topics
    for topic, state in outcome.items():
        info = actual.get(topic)
        if info is None:
            click.echo(f"{topic}: {state} (not visible in the cluster's metadata yet)")
            continue
        click.echo(f"{topic}: {state} (partitions {info.partitions}, replication factor {info.replication_factor})")
        for what, has, wanted, setting in (
                ("partitions", info.partitions, settings.topic_partitions, "TOPIC_PARTITIONS"),
                ("replication factor", info.replication_factor, settings.topic_replication_factor,
                 "TOPIC_REPLICATION_FACTOR")):
            if has != wanted:
                click.echo(f"passpost: warning: topic {topic} has {what} {has}, but "
                           f"{settings_module.PREFIX}{setting} is {wanted} (an existing topic is left as it is)",
                           err=True)


def _devkit(command: str) -> None:
    """Raise the one line saying how to install passpost-dev unless it is importable."""
    try:
        import passpost_dev  # noqa: F401
    except ModuleNotFoundError as missing:
        if missing.name is None or missing.name.partition(".")[0] != "passpost_dev":
            raise
        raise ConfigurationError(f"`{command}` needs the development package passpost-dev: install it "
                                 "(`make dev` does, or `pip install -e devkit` in a checkout)") from None


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the ingress [PASSPOST_PORT, default 8000].")
@click.option("--consumer", "consumers", multiple=True, metavar="NAME",
              help="Also run the registered consumer NAME (repeatable).")
def dev(port: int | None, consumers: tuple[str, ...]) -> None:
    """Run the whole pipeline on this machine, with a local Kafka unless one is configured (needs passpost-dev)."""
    _devkit("passpost dev")
    from passpost_dev.dev import run

    run(_settings(port=port), consumers)


@cli.group()
def new() -> None:
    """Start something new from a template (needs passpost-dev)."""


@new.command("consumer")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the package [default: ./NAME].")
def new_consumer(name: str, directory: Path | None) -> None:
    """Write a package holding the consumer NAME: its code, a test against a real broker, an image, manifests."""
    _devkit("passpost new")
    from passpost_dev.scaffold import new_consumer as write

    written = write(name, directory)
    click.echo(f"Wrote the consumer {name} in {written}/ ({written / 'README.md'} says what next):\n"
               f"  cd {shlex.quote(str(written))} && pip install -e '.[test]' && pytest")


@cli.group()
def dlq() -> None:
    """Work with the dead-letter topic."""


@dlq.command("replay")
@click.option("--from-beginning", is_flag=True,
              help="Read every dead letter again, not only those after the last replay.")
@click.option("--dry-run", is_flag=True, help="Report what would become events without producing or committing.")
def dlq_replay(from_beginning: bool, dry_run: bool) -> None:
    """Send dead letters through the ingress's parsing again, after a fix."""
    settings = _settings()
    from passpost.ingest.replay import replay

    report = asyncio.run(replay(settings, from_beginning=from_beginning, dry_run=dry_run))
    click.echo(("dry run: " if dry_run else "") + report.summary())


@cli.command()
@click.argument("name")
def consume(name: str) -> None:
    """Run the consumer NAME (registered under the `passpost.consumers` entry points) in its own group."""
    settings = _settings()
    from passpost.consumers.runtime import Runner, load_consumer

    consumer_class = load_consumer(name)
    # A consumer keeps two batches of decoded events alive (one decoded while the other is written).
    # At the default first threshold (700 allocations) the collector keeps promoting them to the old
    # generation and scanning them again in full collections; collecting the young generation every
    # 100,000 allocations still finds cycles without that (what it saves: BENCHMARKS.md, 04ec07f).
    gc.set_threshold(100_000, 50, 100)
    asyncio.run(Runner(consumer_class(settings), settings).run())


@cli.command()
@click.argument("name", type=click.Choice(["analytics"]))
def rebuild(name: str) -> None:
    """Empty the analytics store and replay the events topic from the start into it."""
    settings = _settings()
    from passpost.consumers.analytics.rebuild import rebuild as run_rebuild

    total = asyncio.run(run_rebuild(settings))
    click.echo(f"{name}: rebuilt from {total} records")


@cli.command()
@click.option("--store", type=click.Choice(["analytics", "lakehouse", "all"]),
              help="Which to summarise [default: the analytics store, and the Iceberg table too when "
                   "PASSPOST_ICEBERG_CATALOG_URI is set].")
def report(store: str | None) -> None:
    """Summarise what the analytics store (and the Iceberg table) holds: totals, the last 24 hours, failures."""
    settings = _settings()
    from passpost.consumers.analytics.report import print_report

    store = store or ("all" if settings.iceberg_catalog_uri is not None else "analytics")
    if store in {"analytics", "all"}:
        print_report(settings)
    if store in {"lakehouse", "all"}:
        from datetime import UTC, datetime

        from passpost.consumers.analytics.report import print_summary, report_console
        from passpost.consumers.lakehouse import report as lakehouse_report

        summary = lakehouse_report.read_summary(settings, datetime.now(UTC))
        print_summary(summary, lakehouse_report.where(settings), report_console())


@cli.group()
def lakehouse() -> None:
    """The Iceberg table of `passpost consume lakehouse` (PASSPOST_ICEBERG_*; needs passpost[lakehouse])."""


@lakehouse.command("maintain")
@click.option("--min-files", type=click.IntRange(2), default=2, show_default=True,
              help="Compact a day partition holding at least this many data files into one.")
@click.option("--expire-older-than-hours", type=click.FloatRange(0), default=24.0, show_default=True,
              help="Expire snapshots older than this, except those holding offsets still needed.")
def lakehouse_maintain(min_files: int, expire_older_than_hours: float) -> None:
    """Compact small files and expire old snapshots of the Iceberg table, keeping every needed offset."""
    settings = _settings()
    from datetime import timedelta

    from passpost.consumers.lakehouse.maintain import maintain
    from passpost.consumers.lakehouse.table import require_extra

    require_extra()
    done = maintain(settings, min_files=min_files, expire_older_than=timedelta(hours=expire_older_than_hours))
    click.echo(done.summary())


@cli.group()
def schema() -> None:
    """The event schema and the schema registry (PASSPOST_SCHEMA_REGISTRY_URL)."""


@schema.command("check")
def schema_check() -> None:
    """Check the event schema against every version kept in schemas/history/ and, with a registry, ask it."""
    settings = _settings()
    from passpost.schemas.schema_commands import check

    if not asyncio.run(check(settings, click.echo)):
        raise click.ClickException("the event schema is not compatible (see above)")


@schema.command("register")
def schema_register() -> None:
    """Register the event schema under <events topic>-value and set the subject's compatibility level."""
    settings = _settings()
    if settings.schema_registry_url is None:
        raise click.UsageError("PASSPOST_SCHEMA_REGISTRY_URL: not set; `passpost schema register` needs the registry")
    from passpost.schemas.schema_commands import register

    click.echo(asyncio.run(register(settings)))


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(_run(cli.main, argv))


def _run(entry: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        result = entry(args=argv, prog_name="passpost", standalone_mode=False)
    except PasspostError as error:  # the one place every module's errors end: one line, their status
        click.echo(f"passpost: error: {error}", err=True)
        return error.exit_code
    except click.UsageError as error:
        click.echo(f"passpost: error: {error.format_message()}", err=True)
        return 2
    except (click.Abort, KeyboardInterrupt):
        return 130
    except click.ClickException as error:
        click.echo(f"passpost: error: {error.format_message()}", err=True)
        return error.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    main()
