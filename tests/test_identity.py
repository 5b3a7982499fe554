"""Stored offsets are tied to the topic's identity: a store of another incarnation of the topic is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from passpost.consumers import testing
from passpost.consumers.alerts import AlertsConsumer
from passpost.consumers.analytics import AnalyticsConsumer
from passpost.consumers.analytics.store import open_store
from passpost.consumers.runtime import identity
from passpost.consumers.runtime.identity import ForeignOffsets, TopicIdentity
from passpost.settings import Settings
from tests.kafka_helpers import recreate_topic
from tests.live import free_port

NOW = TopicIdentity("cluster-a", "topic-2")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ")


def check(stored: str | None, *, holds_offsets: bool = True) -> None:
    identity.check("events", stored, NOW, holds_offsets=holds_offsets, store="the store", start_over="start over")


def test_offsets_of_the_same_topic_or_none_at_all_pass() -> None:
    check(NOW.key())
    check("cluster-b/topic-1", holds_offsets=False)  # emptied (a rebuild): the new identity is adopted
    check(None)  # a store written before identities were kept: adopted, with a warning


@pytest.mark.parametrize(("stored", "origin"), [
    ("cluster-a/topic-1", "an earlier topic of that name (deleted and re-created since)"),
    ("cluster-b/topic-2", "another Kafka cluster"),
])
def test_offsets_of_another_incarnation_or_cluster_are_refused_in_one_line(stored: str, origin: str) -> None:
    with pytest.raises(ForeignOffsets) as refused:
        check(stored)
    assert str(refused.value) == (f"the store holds offsets of topic events from {origin} "
                                  f"({TopicIdentity.from_key(stored)}; now {NOW}): start over")


def passpost(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    """A passpost command on the settings' broker, topic, group and stores."""
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "PASSPOST_EVENTS_TOPIC": settings.events_topic, "PASSPOST_CONSUMER_GROUP": str(settings.consumer_group),
           "PASSPOST_ANALYTICS_DSN": settings.analytics_dsn, "PASSPOST_ALERT_STATE_FILE": settings.alert_state_file,
           "PASSPOST_CONSUMER_PORT": str(free_port())}
    # A consumer refused at start exits by itself; one that starts would run into the timeout.
    return subprocess.run([sys.executable, "-m", "passpost", *args], env=env, capture_output=True, text=True,
                          timeout=120)


CONSUMERS: dict[str, Any] = {"analytics": AnalyticsConsumer, "alerts": AlertsConsumer}


@pytest.mark.kafka
@pytest.mark.parametrize("name", sorted(CONSUMERS))
def test_a_store_from_an_earlier_incarnation_of_the_topic_is_refused_at_start(
        kafka_bootstrap: str, tmp_path: Path, name: str) -> None:
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=f"duckdb:///{tmp_path}/analytics.duckdb",
                                    alert_state_file=str(tmp_path / "alerts-state.json"))
    testing.produce(settings, [testing.event(status_code="N811") for _ in range(3)])
    testing.consume(CONSUMERS[name](settings), settings)  # the store now holds offset 3 of this topic
    recreate_topic(kafka_bootstrap, settings.events_topic)
    testing.produce(settings, [testing.event(status_code="N811")])  # offset 0 of the new one

    refused = passpost("consume", name, settings=settings)
    assert refused.returncode == 1, refused.stderr
    # One line says why (the log lines of the start-up before it aside), no traceback.
    [line] = [line for line in refused.stderr.splitlines() if not LOG_LINE.match(line)]
    assert line.startswith("passpost: error: ") and f"offsets of topic {settings.events_topic} from an earlier " \
        "topic of that name (deleted and re-created since)" in line, line

    # The documented way to start over, then the consumer reads the new topic from its start.
    if name == "analytics":
        rebuilt = passpost("rebuild", "analytics", settings=settings)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "rebuild analytics" in line
        store = open_store(settings.analytics_dsn)
        try:
            assert store.count() == 1 and store.load_offsets(settings.events_topic) == {0: 1}
        finally:
            store.close()
    else:
        assert "delete it to start over" in line
        Path(settings.alert_state_file).unlink()
    result = testing.consume(CONSUMERS[name](settings), settings)
    assert result.runner.written == {tp: 1 for tp in result.runner.written} and result.runner.written

