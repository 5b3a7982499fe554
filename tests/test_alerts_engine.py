"""The alerts engine's transactions and its local store (consumers/alerts/engine.py, store.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from passpost import settings
from passpost.consumers.alerts import AlertsConsumer
from passpost.consumers.alerts import consumer as consumer_module
from passpost.consumers.alerts.engine import Alerter
from passpost.consumers.alerts.grouping import Grouper, Notification
from passpost.consumers.alerts.sinks import DeliveryError
from passpost.consumers.alerts.store import StateStore, StateStoreError
from passpost.kafka import KafkaUnavailable
from tests.live import free_port
from tests.test_alerts_rules import T0, postback


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self.down = False

    async def send(self, notifications: Sequence[Notification]) -> None:
        if self.down:
            raise DeliveryError("recorder: down")
        self.sent += notifications

    async def aclose(self) -> None:
        pass


def test_a_restart_from_the_store_neither_loses_nor_resends(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "alerts.json")
    sink = Recorder()
    first = Alerter(Grouper(), [sink], store=store, clock=lambda: T0)
    asyncio.run(first.handle([postback("N811", n=n) for n in range(10)], {"events:0": 10}))
    assert [n.count for n in sink.sent] == [10]

    # A delivery that fails leaves the store where it was.
    sink.down = True
    with pytest.raises(DeliveryError):
        asyncio.run(first.handle([postback("N803")], {"events:0": 11}))
    sink.down = False

    # "SIGKILL": a new process restores the store and resumes at its offsets.
    second = Alerter(Grouper(), [sink], store=store, clock=lambda: T0)
    second.restore()
    assert second.offsets == {"events:0": 10}
    assert asyncio.run(second.tick()) == 0  # nothing already notified goes out again
    asyncio.run(second.handle([postback("N803")], {"events:0": 11}))  # the undelivered one is not lost
    assert [(n.labels["status_code"], n.count) for n in sink.sent] == [("N811", 10), ("N803", 1)]


def test_a_damaged_store_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text("{half")
    with pytest.raises(StateStoreError, match=r"alerts\.json: not a passpost alerts state file"):
        StateStore(path).load()
    assert StateStore(tmp_path / "none.json").load() is None


def test_the_consumer_puts_its_metrics_on_the_registry_it_is_given(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    consumer = AlertsConsumer(settings.defaults().replace(alert_state_file=str(tmp_path / "state.json")))
    registry = CollectorRegistry()
    consumer.register_metrics(registry)
    exposed = generate_latest(registry).decode()
    for name in ("passpost_alerts_fired", "passpost_alerts_resolved", "passpost_alerts_delivered",
                 "passpost_alerts_failed", "passpost_alert_delivery_seconds"):
        assert f"# HELP {name}" in exposed


def test_a_reader_that_cannot_start_is_closed_and_reported_in_one_line(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The throw-away reader of committed offsets: a refused bootstrap gives the one-line
    error every client gives, and the reader is closed (no unclosed client left behind)."""
    readers: list[AIOKafkaConsumer] = []

    class Reader(AIOKafkaConsumer):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            readers.append(self)

    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", Reader)
    refusing = f"127.0.0.1:{free_port()}"  # nothing listens there
    consumer = AlertsConsumer(settings.defaults().replace(kafka_bootstrap_servers=refusing,
                                                          alert_state_file=str(tmp_path / "state.json")))

    async def scenario() -> None:
        with pytest.raises(KafkaUnavailable) as caught:
            await consumer.load_offsets([TopicPartition("pass-postbacks.v1", 0)])
        message = str(caught.value)
        assert message.startswith(f"cannot reach Kafka at {refusing}") and "\n" not in message
        await consumer.close()

    asyncio.run(scenario())
    (reader,) = readers
    assert reader._closed is True
