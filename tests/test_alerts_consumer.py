"""`passpost consume alerts` on the real runtime and broker: SIGKILLed, restarted, nothing lost or repeated."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition

from passpost.consumers import testing
from passpost.consumers.alerts import AlertsConsumer
from passpost.consumers.runtime import load_consumer
from tests.live import free_port
from tests.test_alerts_sinks import Receiver, receiver  # noqa: F401 (a fixture)

pytestmark = pytest.mark.kafka

def test_alerts_is_a_registered_consumer() -> None:
    assert load_consumer("alerts") is AlertsConsumer


@contextmanager
def alerts_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`passpost consume alerts`, on a free health port unless ``env`` names one."""
    environ = {**os.environ, "PASSPOST_CONSUMER_PORT": str(free_port()), **env}
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "consume", "alerts"], env=environ,
                                   stdout=sink, stderr=sink)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_for(condition: Callable[[], bool], what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.mark.parametrize("kill_when", ["saved", "delivered"])
def test_sigkill_after_firing_neither_loses_nor_resends(kafka_bootstrap: str, receiver: Receiver,  # noqa: F811
                                                        tmp_path: Path, kill_when: str) -> None:
    """Killed once the step is saved: nothing is sent twice. Killed the moment the receiver has the
    notification (most likely before the save): at most that notification again, identical."""
    settings = testing.settings_for(kafka_bootstrap)
    state = tmp_path / "alerts-state.json"
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": settings.events_topic,
           "PASSPOST_CONSUMER_GROUP": settings.consumer_group or "", "PASSPOST_ALERT_WEBHOOK_URL": receiver.url,
           "PASSPOST_ALERT_STATE_FILE": str(state), "PASSPOST_ALERT_REPEAT_SECONDS": "1",
           "PASSPOST_ALERT_RESOLVE_AFTER_SECONDS": "600"}
    log = tmp_path / "alerts.log"
    testing.produce(settings, [testing.event(status_code="N811") for _ in range(20)]
                    + [testing.event(status_code="N801") for _ in range(20)])

    def saved_offset() -> int:
        try:
            return sum(json.loads(state.read_text())["state"]["offsets"].values())
        except (FileNotFoundError, ValueError):
            return 0

    with alerts_process(env, log) as process:
        if kill_when == "saved":
            wait_for(lambda: saved_offset() == 40, "the first firing to be delivered and saved", log)
        else:
            wait_for(lambda: bool(receiver.bodies), "the first firing to be delivered", log)
        process.send_signal(signal.SIGKILL)
    assert [body["alerts"][0]["annotations"]["count"] for body in receiver.bodies] == ["20"]

    testing.produce(settings, [testing.event(status_code="N811") for _ in range(5)]
                    + [testing.event(status_code="N803")])
    # A group of its own: the broker would otherwise wait out the killed member's session
    # (10 s) before assigning its partitions, and it shows that the local store, not the
    # group's committed offsets, is what keeps the consumer from notifying again.
    restarted = {**env, "PASSPOST_CONSUMER_GROUP": f"{settings.consumer_group}-restarted"}
    with alerts_process(restarted, log):
        wait_for(lambda: len(receiver.bodies) >= 3, "the alerts of the events after the restart", log)
        time.sleep(1.5)  # room for a duplicate to show up, if there were one
    notified = [(body["alerts"][0]["labels"]["status_code"], body["alerts"][0]["annotations"]["count"])
                for body in receiver.bodies]
    if kill_when == "saved":
        # The first N811 notification is not sent again; the new events are neither lost nor counted twice.
        assert sorted(notified) == [("N803", "1"), ("N811", "20"), ("N811", "25")]
    else:
        assert notified.count(("N803", "1")) == 1
        credits = [count for code, count in notified if code == "N811"]
        assert credits[0] == "20" and credits[-1] == "25" and set(credits) <= {"20", "25"}
        first = [body for body in receiver.bodies if body["alerts"][0]["annotations"]["count"] == "20"]
        assert all(body == first[0] for body in first)  # a re-sent step is the same notification


def test_without_its_store_the_consumer_resumes_at_the_groups_committed_offsets(kafka_bootstrap: str,
                                                                                 tmp_path: Path) -> None:
    settings = testing.settings_for(kafka_bootstrap, alert_state_file=str(tmp_path / "state.json"))
    testing.produce(settings, [testing.event(status_code="N811") for _ in range(3)])
    testing.consume(AlertsConsumer(settings), settings)  # the runtime commits as it goes
    (tmp_path / "state.json").unlink()  # e.g. a pod rescheduled without its volume

    async def resume() -> dict[TopicPartition, int]:
        fresh = AlertsConsumer(settings)
        await fresh.start()
        try:
            return await fresh.load_offsets([TopicPartition(settings.events_topic, 0)])
        finally:
            await fresh.close()

    assert asyncio.run(resume()) == {TopicPartition(settings.events_topic, 0): 3}


def test_alert_metrics_are_on_the_runtimes_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    settings = testing.settings_for(kafka_bootstrap, alert_state_file=str(tmp_path / "state.json"))
    testing.produce(settings, [testing.event(status_code="N811", outcome="FAILURE", serial_number="S-1")])
    result = testing.consume(AlertsConsumer(settings), settings)
    exposition = generate_latest(result.runner.metrics.registry).decode()
    assert 'passpost_alerts_fired_total{severity="critical"} 1.0' in exposition
    assert 'passpost_consumer_events_total{consumer="alerts"} 1.0' in exposition


def test_a_refusing_webhook_turns_readiness_503_then_200_and_the_alert_arrives_once(
        kafka_bootstrap: str, receiver: Receiver, tmp_path: Path) -> None:  # noqa: F811
    """The issue's 90 s refusal and 60 s window, scaled down: refused for 10 s, a 3 s stall window."""
    settings = testing.settings_for(kafka_bootstrap)
    port = free_port()
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": settings.events_topic,
           "PASSPOST_CONSUMER_GROUP": settings.consumer_group or "", "PASSPOST_ALERT_WEBHOOK_URL": receiver.url,
           "PASSPOST_ALERT_STATE_FILE": str(tmp_path / "state.json"), "PASSPOST_CONSUMER_PORT": str(port),
           "PASSPOST_CONSUMER_STALL_SECONDS": "3", "PASSPOST_ALERT_DELIVERY_DEADLINE_SECONDS": "1",
           "PASSPOST_CONSUMER_RETRY_MAX_SECONDS": "1"}
    log = tmp_path / "alerts.log"

    def get(path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)

    def readiness() -> int:
        try:
            return get("/readyz").status_code
        except httpx.HTTPError:
            return 0

    receiver.answer = 503
    with alerts_process(env, log):
        wait_for(lambda: readiness() == 200, "the consumer to be assigned its partition", log)
        testing.produce(settings, [testing.event(status_code="N811")])
        refusing_since = time.monotonic()
        # The first refusal comes after the sink's 1 s deadline; 503 once it lasted 3 s more.
        wait_for(lambda: readiness() == 503, "readiness to turn 503", log, timeout=8)
        answer = get("/readyz").text
        assert answer.startswith("not ready: its sink has refused batches for "), answer
        assert "(PASSPOST_CONSUMER_STALL_SECONDS is 3)" in answer
        assert 'passpost_consumer_ready{consumer="alerts"} 0.0' in get("/metrics").text
        time.sleep(max(0.0, 10 - (time.monotonic() - refusing_since)))
        assert readiness() == 503 and receiver.bodies == []

        receiver.answer = 200
        wait_for(lambda: readiness() == 200, "readiness to come back once a batch commits", log)
        wait_for(lambda: bool(receiver.bodies), "the alert", log)
        time.sleep(2)  # room for a duplicate to show up, if there were one
        assert 'passpost_consumer_ready{consumer="alerts"} 1.0' in get("/metrics").text
    assert [(body["alerts"][0]["labels"]["status_code"], body["alerts"][0]["annotations"]["count"])
            for body in receiver.bodies] == [("N811", "1")]


def test_a_state_folder_it_cannot_write_is_one_line_naming_the_setting(kafka_bootstrap: str) -> None:
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "PASSPOST_CONSUMER_PORT": str(free_port()), "PASSPOST_ALERT_STATE_FILE": "/sys/alerts-state.json"}
    result = subprocess.run([sys.executable, "-m", "passpost", "consume", "alerts"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("passpost: error: PASSPOST_ALERT_STATE_FILE: cannot write in /sys ("), line


def test_a_first_start_alerts_on_the_last_hour_not_on_the_topics_whole_retention(kafka_bootstrap: str,
                                                                                 tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer
    from prometheus_client import generate_latest

    from passpost.kafka import client_options
    from passpost.schemas.codec import encode

    settings = testing.settings_for(kafka_bootstrap, alert_state_file=str(tmp_path / "state.json"))
    old = testing.event(status_code="N811", outcome="FAILURE", serial_number="S-last-week")

    async def produce_old() -> None:
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        await producer.start()
        try:
            two_hours_ago = int((time.time() - 7200) * 1000)
            await producer.send_and_wait(settings.events_topic, encode(old), key=old.kafka_key(),
                                         timestamp_ms=two_hours_ago)
        finally:
            await producer.stop()

    asyncio.run(produce_old())
    testing.produce(settings, [testing.event(status_code="N803", outcome="FAILURE", serial_number="S-now")])
    result = testing.consume(AlertsConsumer(settings), settings)
    exposition = generate_latest(result.runner.metrics.registry).decode()
    assert 'passpost_consumer_events_total{consumer="alerts"} 1.0' in exposition, "only the recent event is read"
    # Both codes are critical: one alert fired means the two-hour-old N811 was never seen.
    assert 'passpost_alerts_fired_total{severity="critical"} 1.0' in exposition
