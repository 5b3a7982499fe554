"""Kafka fixtures for tests of passpost and of consumers written for it (a pytest11 plugin of passpost-dev).

kafka_bootstrap  one broker for the whole session: ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS`` if set,
                 else a ``LocalKafka`` (a real KRaft broker run from Kafka's jars). Tests share
                 it, so each test should use topic names of its own.
local_kafka      a ``LocalKafka`` of the test's own, for tests that stop, kill or restart it.
kafka_cluster    a ``LocalKafkaCluster`` of the test's own: three nodes, RF 3, min ISR 2, as in
                 production, for tests that kill a partition leader or the active controller.

Registered under ``pytest11`` (devkit/pyproject.toml): installing passpost-dev is enough, in passpost's
own tests and in a consumer package's (``passpost new consumer`` writes one whose test uses it).

Not done: a testcontainers broker when a container engine answers (issue 23 names it, between the
configured broker and the local one). None answers on the machines this was written on, and Docker
Hub, where the Kafka images are, cannot be reached from them, so that path could not be run; the local
broker needs only Java, which the tests need anyway.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from passpost_dev.kafka import LocalKafka, LocalKafkaCluster


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session broker's ``host:port``."""
    configured = os.environ.get("PASSPOST_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with LocalKafka(tmp_path_factory.mktemp("kafka")) as kafka:
        print(f"session Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
        yield kafka.bootstrap_servers


@pytest.fixture
def local_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own, started; closed after it."""
    # In tmp_path, so that the broker's log outlives a failing test for a look.
    with LocalKafka(tmp_path / "kafka") as kafka:
        print(f"local Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
        yield kafka


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[LocalKafkaCluster]:
    """A three-node cluster of this test's own, started; closed after it."""
    with LocalKafkaCluster(tmp_path / "kafka-cluster") as cluster:
        print(f"local Kafka cluster at {cluster.bootstrap_servers}, logs in {cluster.workdir}/node-*/kafka.log")
        yield cluster
