"""What ``Consumer.write`` may raise and what the runtime then does (consumers/runtime/errors.py), the
one backoff helper (backoff.py) that stops waiting at a stop, and where a consumer's name comes from."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from passpost.consumers import testing
from passpost.consumers.alerts.grouping import Notification
from passpost.consumers.alerts.sinks import DeliveryError, WebhookSink
from passpost.consumers.runtime import (
    Backoff,
    Batch,
    Consumer,
    PoisonBatch,
    Retry,
    Runner,
    UnknownConsumer,
    entry_points,
    load_consumer,
)
from passpost.schemas.event import PassPostback
from tests.live import free_port


class Picky(Consumer):
    """Refuses, as poison, any batch holding an event whose serial number starts with "poison"."""

    name = "picky"

    def __init__(self, settings, fail_with: BaseException | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.written: list[PassPostback] = []
        self.fail_with = fail_with

    async def write(self, batch: Batch) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if any((event.serial_number or "").startswith("poison") for event in batch.events):
            raise PoisonBatch("serial numbers may not start with poison")
        self.written.extend(batch.events)


@pytest.mark.kafka
def test_a_poison_batch_is_written_event_by_event_and_only_the_poison_is_dead_lettered(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    events = [testing.event(serial_number="ok-1"), testing.event(serial_number="poison-1"),
              testing.event(serial_number="ok-2"), testing.event(serial_number="poison-2"),
              testing.event(serial_number="ok-3")]
    testing.produce(settings, events)
    consumer = Picky(settings)
    result = testing.consume(consumer, settings)

    assert [event.serial_number for event in consumer.written] == ["ok-1", "ok-2", "ok-3"]
    letters = sorted(result.dead_letters, key=lambda letter: int(letter.headers_dict["offset"]))
    assert [(letter.headers_dict["error"], letter.headers_dict["offset"]) for letter in letters] == [
        ("poison", "1"), ("poison", "3")]
    assert letters[0].headers_dict["detail"] == "serial numbers may not start with poison"
    # The offsets moved past them: a restart reads nothing again.
    again = Picky(settings)
    testing.consume(again, settings)
    assert again.written == []


@pytest.mark.kafka
def test_an_untyped_error_from_write_stops_the_consumer_uncommitted_and_run_raises_it(kafka_bootstrap: str) -> None:
    settings = testing.settings_for(kafka_bootstrap)
    testing.produce(settings, [testing.event(), testing.event()])
    with pytest.raises(ZeroDivisionError):
        testing.consume(Picky(settings, fail_with=ZeroDivisionError("a bug")), settings)
    # Nothing was committed: the next run gets both events.
    again = Picky(settings)
    testing.consume(again, settings)
    assert len(again.written) == 2


def test_consumer_is_abstract_write_is_required() -> None:
    class Incomplete(Consumer):
        name = "incomplete"

    with pytest.raises(TypeError, match="write"):
        Incomplete(_settings())  # type: ignore[abstract]


def _settings():  # type: ignore[no-untyped-def]
    from passpost.settings import defaults

    return defaults()


def test_retry_stops_waiting_as_soon_as_the_stop_is_set() -> None:
    async def scenario() -> tuple[bool, float]:
        stopping = asyncio.Event()
        retry = Retry(Backoff(initial=30, cap=30), stopping)
        asyncio.get_running_loop().call_later(0.1, stopping.set)
        started = time.monotonic()
        waited = await retry.wait()
        return waited, time.monotonic() - started

    waited, seconds = asyncio.run(scenario())
    assert waited is False and seconds < 5
    assert Retry(Backoff(initial=1, cap=4, deadline=2.5)).next_delay() == 1
    assert [Backoff(initial=0.1, cap=0.5).delay(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_an_alert_sink_waiting_to_retry_gives_up_at_a_stop_not_at_its_deadline() -> None:
    now = _now()
    notification = Notification(
        fingerprint="f", status="firing", labels={"alertname": "A", "severity": "critical"}, summary="s",
        starts_at=now, ends_at=now, count=1, new_events=1, first_seen=now, last_seen=now, samples=(),
        pending_since=None)

    async def scenario() -> float:
        stopping = asyncio.Event()
        # Nothing listens there: every attempt is refused, and the deadline is a minute away.
        sink = WebhookSink(f"http://127.0.0.1:{free_port()}/hook", backoff=Backoff(initial=2, cap=2, deadline=60),
                           stopping=stopping, client=httpx.AsyncClient(timeout=1))
        asyncio.get_running_loop().call_later(0.3, stopping.set)
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="stopping"):
            await sink.send([notification])
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_a_consumer_s_name_is_its_class_s_and_the_entry_point_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in entry_points.registered():  # the built-in ones, from pyproject's entry points
        assert load_consumer(name).name == name

    class EntryPoint:
        def __init__(self, target: type[Consumer]) -> None:
            self.target = target

        def load(self) -> type[Consumer]:
            return self.target

    monkeypatch.setattr(entry_points, "registered", lambda: {"picky": EntryPoint(Picky), "other": EntryPoint(Picky)})
    assert load_consumer("picky") is Picky
    with pytest.raises(UnknownConsumer, match="register it as 'picky'"):
        load_consumer("other")
    settings = _settings()
    assert Runner(Picky(settings), settings).dlq_topic == "pass-postbacks.dlq.picky.v1"
