"""What the cluster says about a topic: its id, the cluster's id, its real partitions and replicas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from passpost import settings as settings_module
from passpost.topic_metadata import describe_topics
from tests.kafka_helpers import recreate_topic, unique_topic

pytestmark = pytest.mark.kafka


def test_a_recreated_topic_has_another_id_on_the_same_cluster(
        kafka_bootstrap: str, kafka_topics) -> None:  # type: ignore[no-untyped-def]
    topic, missing = unique_topic("identity"), unique_topic("missing")
    kafka_topics([topic], partitions=2)
    settings = settings_module.defaults().replace(kafka_bootstrap_servers=kafka_bootstrap)
    before = asyncio.run(describe_topics(settings, [topic, missing]))
    assert set(before.topics) == {topic}  # asking about a topic does not create it
    assert (before.topics[topic].partitions, before.topics[topic].replication_factor) == (2, 1)

    recreate_topic(kafka_bootstrap, topic)
    after = asyncio.run(describe_topics(settings, [topic]))
    assert after.cluster_id == before.cluster_id and after.cluster_id
    assert after.identity(topic) != before.identity(topic)
    assert after.topics[topic].partitions == 1


def test_topics_reports_an_existing_topics_own_layout_and_warns_where_it_differs(
        kafka_bootstrap: str, kafka_topics) -> None:  # type: ignore[no-untyped-def]
    events, dead = unique_topic("events"), unique_topic("dlq")
    kafka_topics([events], partitions=3)
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": events,
           "PASSPOST_DEAD_LETTER_TOPIC": dead, "PASSPOST_TOPIC_PARTITIONS": "6"}
    result = subprocess.run([sys.executable, "-m", "passpost", "topics"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{events}: exists (partitions 3, replication factor 1)",
                                          f"{dead}: created (partitions 6, replication factor 1)"]
    assert result.stderr.splitlines() == [
        f"passpost: warning: topic {events} has partitions 3, but PASSPOST_TOPIC_PARTITIONS is 6 "
        "(an existing topic is left as it is)"]
