"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passpost.localkafka import LocalKafka
from tests.alertmanager_fixtures import alertmanager_url  # noqa: F401 (a fixture, for tests/test_alerts_*)
from tests.kafka_helpers import create_topics
from tests.podman_fixtures import passpost_image  # noqa: F401 (a fixture: the image, built with podman)
from tests.postgres_fixtures import own_postgres, postgres_dsn, postgres_server  # noqa: F401 (fixtures)
from tests.registry_fixtures import schema_registry  # noqa: F401 (a fixture: Apicurio Registry 3)

# ---------------------------------------------------------------------------------------
# Kafka
#
# kafka_bootstrap  one broker for the whole session: PASSPOST_KAFKA_BOOTSTRAP_SERVERS if
#                  set, else a testcontainers broker if Docker is there, else a LocalKafka
#                  (a real broker run from Kafka's jars). Tests share it, so each test
#                  should use its own topic names (tests.kafka_helpers.unique_topic).
# local_kafka      a LocalKafka of the test's own, for tests that stop, kill or restart it.
# kafka_topics     create_topics bound to kafka_bootstrap.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("PASSPOST_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with contextlib.ExitStack() as stack:
        bootstrap = _container_kafka(stack)
        if bootstrap is None:
            kafka = stack.enter_context(LocalKafka(tmp_path_factory.mktemp("kafka")))
            print(f"session Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
            bootstrap = kafka.bootstrap_servers
        yield bootstrap


def _container_kafka(stack: contextlib.ExitStack) -> str | None:
    """A broker in a container if testcontainers is installed and Docker answers."""
    try:
        import docker
        from testcontainers.kafka import KafkaContainer

        docker.from_env().ping()
    except Exception:  # not installed, or no Docker engine: both mean "use LocalKafka"
        return None
    try:
        container = stack.enter_context(KafkaContainer().with_kraft())
        return str(container.get_bootstrap_server())
    except Exception as error:
        warnings.warn(f"Docker is reachable but its Kafka container did not start ({error}); "
                      "using a local broker instead", stacklevel=1)
        return None


@pytest.fixture
def local_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    # In tmp_path, so that the broker's log outlives a failing test for a look.
    with LocalKafka(tmp_path / "kafka") as kafka:
        print(f"local Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
        yield kafka


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> Callable[..., list[str]]:
    """``kafka_topics(names, partitions=1)`` creates topics on the session broker."""
    return functools.partial(create_topics, kafka_bootstrap)


# ---------------------------------------------------------------------------------------
# end of Kafka fixtures
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Markers: a test that uses a server fixture is marked `server` (whatever its module says),
# so `make check` (-m "not server ...") runs exactly the tests that need none.
# ---------------------------------------------------------------------------------------

SERVER_FIXTURES = frozenset({"kafka_bootstrap", "local_kafka", "kafka_topics", "postgres_dsn", "own_postgres",
                             "postgres_server", "alertmanager_url", "schema_registry", "passpost_image"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
