"""Kafka fixtures for tests of passpost and of consumers written for it (a pytest11 plugin of passpost-dev).

kafka_bootstrap  one broker for the whole session: ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS`` if set, else
                 a testcontainers broker when testcontainers is installed and a container engine
                 answers, else a ``LocalKafka`` (a real KRaft broker run from Kafka's jars). Tests
                 share it, so each test should use topic names of its own.
local_kafka      a ``LocalKafka`` of the test's own, for tests that stop, kill or restart it.
kafka_cluster    a ``LocalKafkaCluster`` of the test's own: three nodes, RF 3, min ISR 2, as in
                 production, for tests that kill a partition leader or the active controller.

Registered under ``pytest11`` (devkit/pyproject.toml): installing passpost-dev is enough, in passpost's
own tests and in a consumer package's (``passpost new consumer`` writes one whose test uses it).

The container path is optional (``pip install testcontainers[kafka]``); where no engine answers, as on
the machines passpost's CI runs on, the local broker serves, needing only the Java the tests need anyway.
"""

from __future__ import annotations

import contextlib
import os
import warnings
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
    with contextlib.ExitStack() as stack:
        bootstrap = container_kafka(stack)
        if bootstrap is None:
            kafka = stack.enter_context(LocalKafka(tmp_path_factory.mktemp("kafka")))
            print(f"session Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
            bootstrap = kafka.bootstrap_servers
        yield bootstrap


def container_kafka(stack: contextlib.ExitStack) -> str | None:
    """A KRaft broker in a container, kept until ``stack`` closes; None when testcontainers is not
    installed, no container engine answers, or its container does not start (then a warning says why)."""
    try:
        # Optional, untyped: ``pip install testcontainers[kafka]`` brings both.
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found,import-untyped,unused-ignore]

        docker.from_env().ping()
    except Exception:  # noqa: BLE001 (not installed, or no engine: both mean "use the local broker")
        return None
    try:
        container = stack.enter_context(KafkaContainer().with_kraft())
        return str(container.get_bootstrap_server())
    except Exception as error:  # noqa: BLE001 (an image that cannot be pulled, a port refused, ...)
        warnings.warn(f"a container engine answers but its Kafka container did not start ({error}); "
                      "using a local broker instead", stacklevel=1)
        return None


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
