"""Kafka client options and topic creation (passpost/kafka.py), and `passpost topics`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from passpost import settings as settings_module
from passpost.kafka import client_options
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
