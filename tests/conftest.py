"""Shared pytest fixtures."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from tests.alertmanager_fixtures import alertmanager_url  # noqa: F401 (a fixture, for tests/test_alerts_*)
from tests.jaeger_fixtures import jaeger  # noqa: F401 (a fixture: a real Jaeger, for tests/test_tracing*)
from tests.kafka_helpers import create_topics
from tests.podman_fixtures import passpost_image, passpost_lakehouse_image  # noqa: F401 (fixtures: the images, built with podman)
from tests.postgres_fixtures import own_postgres, postgres_dsn, postgres_server  # noqa: F401 (fixtures)
from tests.registry_fixtures import schema_registry  # noqa: F401 (a fixture: Apicurio Registry 3)

# ---------------------------------------------------------------------------------------
# Kafka
#
# kafka_bootstrap  one broker for the whole session: PASSPOST_KAFKA_BOOTSTRAP_SERVERS if
#                  set, else a LocalKafka (a real broker run from Kafka's jars). Tests share
#                  it, so each test should use its own topic names (tests.kafka_helpers.unique_topic).
# local_kafka      a LocalKafka of the test's own, for tests that stop, kill or restart it.
#                  Both come from passpost-dev's pytest plugin (passpost_dev/pytest_plugin.py).
# kafka_topics     create_topics bound to kafka_bootstrap.
# ---------------------------------------------------------------------------------------


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

SERVER_FIXTURES = frozenset({"kafka_bootstrap", "local_kafka", "kafka_cluster", "kafka_topics", "postgres_dsn", "own_postgres",
                             "postgres_server", "alertmanager_url", "schema_registry", "passpost_image",
                             "passpost_lakehouse_image", "jaeger"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
