"""A broker or coordinator lost and back is one line each, with how long it was away; aiokafka's
per-attempt lines are DEBUG (passpost/kafka_health.py)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from passpost import kafka_health
from passpost.kafka_health import KafkaReachability
from passpost.logs import BatchingStreamHandler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaReachability, Clock]:
    """Logging configured as a process does, with a fresh tracker on a clock of the test's.

    Called in the test's body: configure() binds its handler to sys.stderr as it is then."""
    from passpost.logs import configure

    configure("text", "info")
    clock = Clock()
    fresh = KafkaReachability(clock)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and kafka_health.REACHABILITY in logger.filters:
            monkeypatch.setattr(logger, "filters", [fresh if f is kafka_health.REACHABILITY else f
                                                     for f in logger.filters])
    monkeypatch.setattr(kafka_health, "REACHABILITY", fresh)
    return fresh, clock


def flush() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingStreamHandler):
            handler.flush()


def warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    flush()
    return [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line or " ERROR " in line]


class FakeClient:
    """The part of aiokafka's AIOKafkaClient the tracker wraps: ``_get_conn`` and the cluster metadata."""

    def __init__(self) -> None:
        self.up = True
        self.cluster = SimpleNamespace(broker_metadata=lambda node: SimpleNamespace(host="127.0.0.1", port=9000 + node))

    async def _get_conn(self, node_id: int, **_: Any) -> object | None:
        if self.up:
            return object()
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", node_id,
                                                   "[Errno 111] Connect call failed")
        return None


def test_a_broker_away_and_back_is_two_lines_however_many_attempts(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    reachability, clock = tracker(monkeypatch)
    producer = SimpleNamespace(_client=FakeClient())
    reachability.watch(producer)
    reachability.watch(producer)  # a second watch does not wrap twice
    client = producer._client

    async def attempts(count: int) -> None:
        for _ in range(count):
            await client._get_conn(2)
            logging.getLogger("aiokafka.producer.sender").warning(
                "Cannot send %r to %s: %r", "ProduceRequest", 2, "NodeNotReadyError()")

    asyncio.run(attempts(3))
    assert warnings(capsys) == []
    client.up = False
    asyncio.run(attempts(50))
    assert reachability.unreachable_brokers() == {2: "127.0.0.1:9002"}
    clock.now += 10.5
    client.up = True
    asyncio.run(attempts(5))
    lines = warnings(capsys)
    assert len(lines) == 2, lines
    assert "Kafka broker 2 at 127.0.0.1:9002 unreachable ([Errno 111] Connect call failed)" in lines[0]
    assert "Kafka broker 2 at 127.0.0.1:9002 reachable again after 10.5 s" in lines[1]
    assert reachability.unreachable_brokers() == {}


def test_a_coordinator_lost_and_found_is_two_lines(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    reachability, clock = tracker(monkeypatch)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.info("Discovered coordinator %s for group %s", 1, "passpost-analytics")  # the first: no line
    # A coordinator found again at once (a group's first start, while the broker loads the
    # offsets topic) is routine: no line.
    coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "passpost-analytics")
    clock.now += 0.5
    coordinator.info("Discovered coordinator %s for group %s", 1, "passpost-analytics")
    assert warnings(capsys) == []
    for _ in range(20):
        coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "passpost-analytics")
        coordinator.error("Group Coordinator Request failed: %s", "[Error 15] CoordinatorNotAvailableError")
        coordinator.error("Heartbeat send request failed: %s. Will retry.", "NodeNotReadyError")
        clock.now += 0.25
    coordinator.info("Discovered coordinator %s for group %s", 3, "passpost-analytics")
    lines = warnings(capsys)
    assert len(lines) == 2, lines
    assert "group coordinator of passpost-analytics (broker 1) lost 2.0 s ago" in lines[0]
    assert "group coordinator of passpost-analytics is broker 3 again after 5.0 s, moved from broker 1" in lines[1]


def test_lines_that_matter_stay_and_debug_shows_the_attempts(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    tracker(monkeypatch)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Heartbeat session expired - marking coordinator dead")
    logging.getLogger("aiokafka.producer.sender").warning("Got error produce response: %s", "NotEnoughReplicas")
    lines = warnings(capsys)
    assert len(lines) == 2 and "Heartbeat session expired" in lines[0] and "NotEnoughReplicas" in lines[1]

    logging.getLogger("aiokafka").setLevel(logging.DEBUG)
    try:
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 2, "refused")
        flush()
        [line] = capsys.readouterr().err.splitlines()
        assert " DEBUG aiokafka Unable connect to node with id 2: refused" in line
    finally:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


def test_an_idle_client_tries_an_unreachable_broker_again_until_it_is_back() -> None:
    """Gap: a process that asks for no connection (an idle ingress) kept a broker that came back
    "unreachable" (its gauge 0, its alert firing) until aiokafka's next metadata refresh."""
    reachability = KafkaReachability(probe_seconds=0.05)
    client = FakeClient()
    client._sync_task = object()  # type: ignore[attr-defined]  # aiokafka's metadata task: the client is open
    reachability.watch(client)

    async def scenario() -> None:
        client.up = False
        await client._get_conn(2)  # the last request the client makes for a while
        assert reachability.unreachable_brokers() == {2: "127.0.0.1:9002"}
        client.up = True
        for _ in range(40):
            if not reachability.unreachable_brokers():
                break
            await asyncio.sleep(0.05)
        assert reachability.unreachable_brokers() == {}
        await asyncio.sleep(0.2)
        assert not reachability._probes, "the prober stops once every broker is reached"

    asyncio.run(scenario())
