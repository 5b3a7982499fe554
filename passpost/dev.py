"""``passpost dev``: the whole pipeline on one machine, for trying it out.

Starts a local Kafka broker unless ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS`` names one,
creates the topics, and runs the ingress with a generated token, then prints a ``curl``
that posts the vendor's own example, exactly as the vendor printed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
from collections.abc import Iterator
from importlib import resources

import click

from passpost.kafka import create_topics
from passpost.settings import Settings

VENDOR_EXAMPLE = resources.files("passpost").joinpath("examples/vendor_example.xml").read_text()


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """The settings with a reachable broker: the configured one, or a local one started here."""
    if "PASSPOST_KAFKA_BOOTSTRAP_SERVERS" in os.environ:
        yield settings
        return
    from passpost.localkafka import LocalKafka, LocalKafkaError

    click.echo("Starting a local Kafka broker (the first run downloads its jars from Maven Central)...", err=True)
    try:
        broker = LocalKafka().start()
    except LocalKafkaError as error:
        raise click.ClickException(str(error)) from None
    try:
        click.echo(f"Kafka is up at {broker.bootstrap_servers} (log: {broker.log_path})", err=True)
        yield settings.replace(kafka_bootstrap_servers=broker.bootstrap_servers)
    finally:
        broker.close()


def curl_command(settings: Settings, token: str) -> str:
    url = f"http://{settings.host}:{settings.port}/postbacks/passes"
    return (
        f"curl -sS -X POST {shlex.quote(url)} \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + token)} \\\n"
        f"  -H 'Content-Type: application/xml' \\\n"
        f"  --data-binary @- <<'XML'\n{VENDOR_EXAMPLE.rstrip(chr(10))}\nXML"
    )


def run(settings: Settings) -> None:
    from passpost.ingest.server import run as serve

    token = settings.ingest_tokens[0] if settings.ingest_tokens else secrets.token_urlsafe(18)
    settings = settings.replace(ingest_tokens=settings.ingest_tokens or (token,))
    with kafka_for(settings) as settings:
        asyncio.run(create_topics(settings))
        click.echo(
            f"\nThe ingress listens on http://{settings.host}:{settings.port} with token {token}\n"
            f"Post the vendor's example:\n\n{curl_command(settings, token)}\n\n"
            "Ctrl-C stops everything.\n",
            err=True,
        )
        serve(settings)
