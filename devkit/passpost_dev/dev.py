"""What ``passpost dev`` runs: the whole pipeline on one machine, for trying it out.

Starts a local Kafka broker unless ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS`` names one,
creates the topics, runs the built-in consumers (analytics into DuckDB, alerts to the
log) as child processes the way production runs them, and the ingress with a generated
token, then prints a ``curl`` that posts the vendor's own example, exactly as the vendor
printed it.

The local broker keeps its data in ``data/kafka``, beside the analytics store and the alerts
state file (``data/``): the stores hold offsets of the broker's topic, so the broker must
outlive a run just as they do. A broker new at each run would be another cluster whose
topic starts again at offset 0, and the consumers rightly refuse stores of another cluster.
Keeping the broker (rather than emptying the stores at each run) also keeps what the
developer posted: `passpost report` after a restart still shows it. `rm -r data` starts
everything over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import click

from passpost.kafka import create_topics
from passpost.settings import Settings
from passpost_dev.kafka import LocalKafka, kafka_jars_cached
from passpost_dev.ports import free_port
from passpost_dev.processes import stop_all

VENDOR_EXAMPLE = resources.files("passpost_dev").joinpath("vendor_example.xml").read_text()
LOCAL_KAFKA_DIR = Path("data") / "kafka"  # relative, like the stores' default paths


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """The settings with a reachable broker: the configured one, or a local one started here."""
    if "PASSPOST_KAFKA_BOOTSTRAP_SERVERS" in os.environ:
        yield settings
        return
    click.echo(starting_message(downloads=not kafka_jars_cached()), err=True)
    broker = LocalKafka(LOCAL_KAFKA_DIR.absolute()).start()  # the JVM runs in that folder (LocalKafkaError: 1 line)
    try:
        click.echo(f"Kafka is up at {broker.bootstrap_servers} (log: {broker.log_path})", err=True)
        yield settings.replace(kafka_bootstrap_servers=broker.bootstrap_servers)
    finally:
        broker.close()


def starting_message(*, downloads: bool) -> str:
    """Maven Central is named only when the jars are not in the cache yet (the first run)."""
    return "Starting a local Kafka broker" + (" (downloading its jars from Maven Central first)" if downloads else "") \
        + "..."


def report_command() -> str:
    """`passpost report` as this shell can run it: the installed script by its path unless it is on PATH."""
    script = Path(sys.executable).parent / "passpost"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m passpost report"
    on_path = shutil.which("passpost")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "passpost report"
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())  # .venv/bin/passpost in the checkout
    return f"{shlex.quote(str(script))} report"


def report_hint() -> str:
    makefile = Path("Makefile")
    in_checkout = makefile.is_file() and "\nreport:" in makefile.read_text()
    return f"`{report_command()}`" + (" (or `make report`)" if in_checkout else "")


DEV_CONSUMERS = ("analytics", "alerts")


def dev_consumers(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The built-ins, then each of ``extra`` once (``passpost dev --consumer NAME``), each checked to be
    registered, so that a misspelt name is one line before anything starts."""
    from passpost.consumers.runtime import load_consumer

    names = tuple(dict.fromkeys((*DEV_CONSUMERS, *extra)))
    for name in names:
        load_consumer(name)  # UnknownConsumer: one line naming those registered, status 2
    return names


@contextlib.contextmanager
def consumers_for(settings: Settings, names: Sequence[str] = DEV_CONSUMERS) -> Iterator[list[str]]:
    """Each consumer of ``names`` as its own `passpost consume` process, stopped with SIGTERM on exit."""
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers}
    processes: list[subprocess.Popen[bytes]] = []
    described: list[str] = []
    try:
        for name in names:
            port = free_port()
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "passpost", "consume", name], env={**env, "PASSPOST_CONSUMER_PORT": str(port)},
            ))
            described.append(f"{name} (metrics on http://{settings.host}:{port}/metrics)")
        yield described
    finally:
        stop_all(processes)


def curl_command(settings: Settings, token: str) -> str:
    url = f"http://{settings.host}:{settings.port}/postbacks/passes"
    return (
        f"curl -sS -X POST {shlex.quote(url)} \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + token)} \\\n"
        f"  -H 'Content-Type: application/xml' \\\n"
        f"  --data-binary @- <<'XML'\n{VENDOR_EXAMPLE.rstrip(chr(10))}\nXML"
    )


def run(settings: Settings, consumers: Sequence[str] = ()) -> None:
    """The pipeline with the built-in consumers and ``consumers`` (registered names) beside them."""
    from passpost.ingest.server import listening_socket
    from passpost.ingest.server import run as serve

    names = dev_consumers(consumers)

    # Before anything starts: a taken port is one line naming the setting, as for `passpost serve`.
    listening_socket(settings.host, settings.port).close()

    token = settings.ingest_tokens[0] if settings.ingest_tokens else secrets.token_urlsafe(18)
    settings = settings.replace(ingest_tokens=settings.ingest_tokens or (token,))
    with kafka_for(settings) as settings:
        asyncio.run(create_topics(settings))
        with consumers_for(settings, names) as described:
            click.echo(
                f"\nThe ingress listens on http://{settings.host}:{settings.port} with token {token}\n"
                f"Consumers: {', '.join(described)}; analytics in {settings.analytics_dsn}, "
                f"alerts in this terminal. {report_hint()} shows what the store holds (from another "
                "terminal too).\n"
                f"Post the vendor's example (change N801 to N811 to see an alert):\n\n"
                f"{curl_command(settings, token)}\n\n"
                "Ctrl-C stops everything.\n",
                err=True,
            )
            serve(settings)
