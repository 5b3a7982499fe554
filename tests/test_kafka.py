"""Kafka client options and topic creation (passpost/kafka.py), and `passpost topics`."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from passpost import settings as settings_module
from passpost.kafka import client_options, start_client
from tests.kafka_helpers import unique_topic


def test_plaintext_options_carry_no_credentials() -> None:
    options = client_options(settings_module.load({"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2"}))
    assert options["bootstrap_servers"] == ["a:1", "b:2"]
    assert options["security_protocol"] == "PLAINTEXT"
    assert "sasl_plain_password" not in options and "ssl_context" not in options


def test_sasl_options() -> None:
    options = client_options(settings_module.load({
        "PASSPOST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PASSPOST_KAFKA_SASL_USERNAME": "u",
        "PASSPOST_KAFKA_SASL_PASSWORD": "p",
    }))
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "u", "p")
    assert options["ssl_context"] is not None


async def describe(bootstrap: str, topic: str) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        return len(description["partitions"]), entries
    finally:
        await admin.close()


@pytest.mark.kafka
def test_topics_command_creates_both_topics_idempotently(kafka_bootstrap: str) -> None:
    events, dead = unique_topic("events"), unique_topic("dlq")
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": events,
           "PASSPOST_DEAD_LETTER_TOPIC": dead, "PASSPOST_TOPIC_PARTITIONS": "3"}
    first = subprocess.run([sys.executable, "-m", "passpost", "topics"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"{events}: created (partitions 3" in first.stdout and f"{dead}: created" in first.stdout
    again = subprocess.run([sys.executable, "-m", "passpost", "topics"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and f"{events}: exists" in again.stdout

    partitions, configs = asyncio.run(describe(kafka_bootstrap, dead))
    assert partitions == 3
    # A dead letter carries a whole request body: the topic must take the largest one.
    assert int(configs["max.message.bytes"]) > 1024 * 1024


class GatedClient:
    """An aiokafka client whose start logs a refused connection, as aiokafka does, and waits to be let through."""

    def __init__(self) -> None:
        self.may_finish = asyncio.Event()

    async def start(self) -> None:
        logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1 (while starting)")
        await self.may_finish.wait()


def test_overlapping_starts_hide_only_their_own_aiokafka_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Two clients starting at once (the publisher replacing its producer while another client starts): each start
    hides what aiokafka logs for it, nothing else, and afterwards aiokafka's errors show again. Saving, setting and
    restoring the process-wide level instead left it at CRITICAL when the starts overlapped (A in, B in, A out,
    B out), hiding every aiokafka error for the rest of the process."""
    settings = settings_module.load({})
    caplog.set_level(logging.WARNING, logger="aiokafka")

    async def interleaved() -> None:
        first, second = GatedClient(), GatedClient()
        starting_first = asyncio.create_task(start_client(first, settings))
        await asyncio.sleep(0.01)
        starting_second = asyncio.create_task(start_client(second, settings))
        await asyncio.sleep(0.01)
        # Meanwhile a client that runs already (this task starts none) reports trouble: it shows.
        logging.getLogger("aiokafka.consumer.fetcher").error("Unexpected error in fetcher routine")
        first.may_finish.set()
        await starting_first
        second.may_finish.set()
        await starting_second

    asyncio.run(interleaved())
    logging.getLogger("aiokafka.conn").error("Unexpected exception in AIOKafkaConnection (afterwards)")
    aiokafka_lines = [record.getMessage() for record in caplog.records if record.name.startswith("aiokafka")]
    assert aiokafka_lines == ["Unexpected error in fetcher routine", "Unexpected exception in AIOKafkaConnection (afterwards)"]
    assert logging.getLogger("aiokafka").level == logging.WARNING


def test_a_task_the_start_spawned_is_heard_once_the_start_is_over(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka's clients start background tasks (metadata, heartbeats) that inherit the start's context; their
    lines are quiet during the start only."""
    settings = settings_module.load({})
    caplog.set_level(logging.WARNING, logger="aiokafka")
    started = asyncio.Event()

    class SpawningClient:
        async def start(self) -> None:
            self.heartbeat = asyncio.create_task(self.heartbeats())
            await asyncio.sleep(0.01)  # the task's first line is logged while the start still runs

        async def heartbeats(self) -> None:
            logging.getLogger("aiokafka.consumer.group_coordinator").error("Heartbeat while starting")
            await started.wait()
            logging.getLogger("aiokafka.consumer.group_coordinator").error("Heartbeat session expired")

    async def run() -> None:
        client = SpawningClient()
        await start_client(client, settings)
        await asyncio.sleep(0.01)
        started.set()
        await client.heartbeat

    asyncio.run(run())
    assert [record.getMessage() for record in caplog.records if record.name.startswith("aiokafka")] == [
        "Heartbeat session expired"]
