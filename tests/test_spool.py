"""The durable spool against a real broker that is paused, stopped, replaced (issue 11).

`passpost serve` runs as its own process with PASSPOST_SPOOL_DIR, the way it runs in
production; the broker is a LocalKafka of the test's own. What must hold: every request is
answered 200 within the vendor's 10 s while the spool accepts, and every event answered
200 reaches the topic, in per-key order, after the broker is back, after the ingress was
killed, after the broker was replaced; a full spool answers 503 with Retry-After.

The issue's pause is 60 s at 20 requests/s with the default 5 s produce deadline; here the
deadline is 2 s and the pause lasts until more than 100 requests have been answered from the
spool (about 8 s, several deadlines long), so that the suite stays short.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastavro
import httpx
import pytest

from passpost_dev.kafka import LocalKafka
from tests.kafka_helpers import create_topics, read_all
from tests.live import LiveIngress, free_port, live_ingress, wait_until_ready

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))
TOKEN = "spool-token"
TOPICS = ["pass-postbacks.v1", "pass-postbacks.dlq.v1"]
DEADLINE = 2.0


def env_for(bootstrap: str, spool: Path, **extra: str) -> dict[str, str]:
    return {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PASSPOST_INGEST_TOKENS": TOKEN,
            "PASSPOST_PRODUCE_TIMEOUT_SECONDS": str(DEADLINE), "PASSPOST_LOG_LEVEL": "warning",
            "PASSPOST_SPOOL_DIR": str(spool), "PASSPOST_SPOOL_DRAIN_SECONDS": "3", **extra}


def postback(worker: int, number: int, items: int = 1) -> bytes:
    """``items`` events keyed by the worker's serial number, numbered in CUSTOMPASSID."""
    notifications = "".join(
        f"<NOTIFICATION><STATUSCODE>N801</STATUSCODE><CUSTOMPASSID>{number}.{item}</CUSTOMPASSID>"
        f"<SERIALNUMBER>w{worker}</SERIALNUMBER><TIMESTAMP>2013-11-26T11:37:11-05:00</TIMESTAMP></NOTIFICATION>"
        for item in range(items))
    return f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>{notifications}</POSTBACK>".encode()


@dataclass
class Answer:
    worker: int
    number: int
    sent: float
    answered: float
    status: int
    event_ids: list[str]


def post(client: httpx.Client, worker: int, number: int, items: int = 1) -> Answer:
    sent = time.monotonic()
    try:
        response = client.post("/postbacks/passes", content=postback(worker, number, items))
        status = response.status_code
        ids = response.json().get("event_ids", []) if status == 200 else []
    except httpx.HTTPError:
        status, ids = 0, []
    return Answer(worker, number, sent, time.monotonic(), status, ids)


def client_for(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15)


@contextmanager
def steady_posts(url: str, workers: int, per_second: float) -> Iterator[list[Answer]]:
    """``workers`` clients, each posting one request at a time at ``per_second``, until the block ends."""
    answers: list[Answer] = []
    stop = threading.Event()

    def work(worker: int) -> None:
        with client_for(url) as client:
            number = 0
            while not stop.is_set():
                number += 1
                started = time.monotonic()
                answers.append(post(client, worker, number))
                stop.wait(max(0.0, 1 / per_second - (time.monotonic() - started)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def topic_events(bootstrap: str, expected: set[str], timeout: float = 60) -> list[dict]:  # type: ignore[type-arg]
    """The events topic in offset order, read until it holds every id in ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_all(bootstrap, TOPICS[0], timeout=5)
        events = [fastavro.schemaless_reader(io.BytesIO(r.value[10:]), SCHEMA) for r in records]
        if expected <= {event["event_id"] for event in events} or time.monotonic() > deadline:
            return events


def check_per_key_order(events: list[dict]) -> None:  # type: ignore[type-arg]
    """Each worker's events, by first appearance, in the order the worker sent them."""
    first_seen: dict[str, list[tuple[int, int]]] = {}
    seen: set[str] = set()
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        number, item = event["custom_pass_id"].split(".")
        first_seen.setdefault(event["serial_number"], []).append((int(number), int(item)))
    for serial, order in first_seen.items():
        assert order == sorted(order), f"events of key {serial} out of order"


def spool_answered(answers: list[Answer], paused_at: float, resumed_at: float) -> list[Answer]:
    """The answers to requests sent while the spool answers for a paused broker: from a second
    past the first produce deadline to a second before the resume."""
    return [a for a in list(answers) if paused_at + DEADLINE + 1 < a.sent < resumed_at - 1]


@contextmanager
def paused(kafka: LocalKafka) -> Iterator[None]:
    kafka.pause()
    try:
        yield
    finally:
        kafka.resume()


# ------------------------------------------------------------------------------ tests


def test_a_paused_broker_is_ridden_out_in_order(local_kafka: LocalKafka, tmp_path: Path) -> None:
    create_topics(local_kafka.bootstrap_servers, TOPICS)
    spool = tmp_path / "spool"
    with live_ingress(env_for(local_kafka.bootstrap_servers, spool), tmp_path / "ingress.log") as ingress:
        with steady_posts(ingress.url, workers=4, per_second=5) as answers:  # 20 requests/s
            wait_for(lambda: sum(a.status == 200 for a in list(answers)) >= 20, 60, "the stream to be answered")
            with paused(local_kafka):
                paused_at = time.monotonic()
                # Paused until more than 100 requests sent well after the first produce deadline
                # (so the spool has taken over) have been answered, a second before the resume.
                wait_for(lambda: len(spool_answered(answers, paused_at, time.monotonic())) > 100, 60,
                         "requests answered while the broker is paused")
                assert metric(ingress.url, "passpost_spool_events") > 0
                assert httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 200
            resumed_at = time.monotonic()
            # Posting goes on until the forwarder has caught up and posts go to Kafka again.
            wait_for(lambda: metric(ingress.url, "passpost_spool_events") == 0, 60, "the spool to drain under load")
            drained_at = time.monotonic()
            wait_for(lambda: sum(a.sent > drained_at for a in list(answers)) >= 4, 60, "posts after the drain")
        wait_for(lambda: metric(ingress.url, "passpost_spool_events") == 0, 60, "the spool to drain")
        spooled = metric(ingress.url, "passpost_spool_appended_events_total")
        forwarded = metric(ingress.url, "passpost_spool_forwarded_events_total")
        duplicates = metric(ingress.url, "passpost_spool_duplicate_events_total")

    assert all(a.status == 200 for a in answers), {a.status for a in answers}
    slowest = max(a.answered - a.sent for a in answers)
    assert slowest < 10, f"an answer took {slowest:.1f} s"
    during = spool_answered(answers, paused_at, resumed_at)
    assert len(during) > 100 and all(a.answered - a.sent < 1 for a in during), "answered from the spool"
    assert spooled >= len(during) and forwarded == spooled

    accepted = {event_id for a in answers for event_id in a.event_ids}
    events = topic_events(local_kafka.bootstrap_servers, accepted)
    ids = [event["event_id"] for event in events]
    assert accepted <= set(ids), f"{len(accepted - set(ids))} events answered 200 are missing"
    twice = {event_id for event_id in ids if ids.count(event_id) > 1}
    # The requests in flight at the pause were spooled at their deadline while their first
    # sends were still undecided; the forwarder waited for those instead of sending copies.
    assert not twice, f"{len(twice)} events twice on the topic"
    assert duplicates == 0
    check_per_key_order(events)


def test_a_killed_ingress_loses_nothing_while_spooling_or_forwarding(local_kafka: LocalKafka, tmp_path: Path) -> None:
    create_topics(local_kafka.bootstrap_servers, TOPICS)
    spool = tmp_path / "spool"
    env = env_for(local_kafka.bootstrap_servers, spool)
    answers: list[Answer] = []
    with live_ingress(env, tmp_path / "ingress-1.log") as ingress, paused(local_kafka):
        with client_for(ingress.url) as client:
            answers += [post(client, 0, n) for n in range(1, 6)]  # the first waits out the deadline
            answers += [post(client, 0, n, items=300) for n in range(6, 40)]
        ingress.process.send_signal(signal.SIGKILL)  # while spooling
        ingress.process.wait(10)
        # Restarted with the broker still paused: it listens at once and keeps spooling.
        with live_ingress(env, tmp_path / "ingress-2.log", timeout=20) as ingress:
            assert metric(ingress.url, "passpost_spool_events") == sum(len(a.event_ids) for a in answers)
            with client_for(ingress.url) as client:
                answers += [post(client, 0, n, items=300) for n in range(40, 70)]
            assert all(a.status == 200 for a in answers), [a.status for a in answers]
            url, process = ingress.url, ingress.process
            local_kafka.resume()
            deadline = time.monotonic() + 30
            while metric(url, "passpost_spool_forwarded_events_total") == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)  # while forwarding
            process.wait(10)
    left = list(spool.glob("*.seg"))
    assert left, "the ingress was killed before it had forwarded everything"
    # Restarted, then told to stop at once: on SIGTERM the forwarder drains the rest
    # (within PASSPOST_SPOOL_DRAIN_SECONDS) before the process exits.
    with live_ingress({**env, "PASSPOST_SPOOL_DRAIN_SECONDS": "60"}, tmp_path / "ingress-3.log") as ingress:
        ingress.process.send_signal(signal.SIGTERM)
        assert ingress.process.wait(90) == 0, ingress.log.read_text()
    assert not list(spool.glob("*.seg")), "drained on SIGTERM"

    accepted = {event_id for a in answers for event_id in a.event_ids}
    assert len(accepted) == 5 + 64 * 300
    events = topic_events(local_kafka.bootstrap_servers, accepted)
    assert accepted <= {event["event_id"] for event in events}
    check_per_key_order(events)


def test_a_replaced_broker_gets_the_spool_and_bad_records_are_counted(local_kafka: LocalKafka, tmp_path: Path) -> None:
    create_topics(local_kafka.bootstrap_servers, TOPICS)
    port = local_kafka.port
    with live_ingress(env_for(local_kafka.bootstrap_servers, tmp_path / "spool"), tmp_path / "ingress-1.log") as ingress:
        local_kafka.close()  # gone for good, data and all
        with client_for(ingress.url) as client:
            answers = [post(client, 1, n) for n in range(1, 41)]
            assert client.post("/postbacks/passes", content=b"<not xml").status_code == 400  # spooled too
        assert all(a.status == 200 for a in answers)
        assert metric(ingress.url, "passpost_spool_events") == 41
        with LocalKafka(tmp_path / "kafka-2", port=port) as replacement:
            create_topics(replacement.bootstrap_servers, TOPICS)
            wait_for(lambda: metric(ingress.url, "passpost_spool_events") == 0, 60, "the spool to drain")
            accepted = {i for a in answers for i in a.event_ids}
            assert accepted <= {e["event_id"] for e in topic_events(replacement.bootstrap_servers, accepted)}
            (dead_letter,) = read_all(replacement.bootstrap_servers, TOPICS[1], timeout=10)
            assert dead_letter.value == b"<not xml" and dict(dead_letter.headers)["error"] == b"invalid_xml"

            # Another spool filled with no Kafka at all, then damaged as a disk or a crash
            # could: one record in the middle corrupt, the last one cut short.
            spool = tmp_path / "spool-2"
            nowhere = env_for(f"127.0.0.1:{free_port()}", spool)
            with live_ingress(nowhere, tmp_path / "ingress-2.log") as ingress:
                with client_for(ingress.url) as client:
                    answers = [post(client, 3, n) for n in range(1, 11)]
                ingress.process.send_signal(signal.SIGKILL)
                ingress.process.wait(10)
            (segment,) = sorted(spool.glob("*.seg"))
            data = bytearray(segment.read_bytes())
            starts = [match.start() for match in re.finditer(rb"PSR1", bytes(data))]
            assert len(starts) == 10
            data[starts[4] + 40] ^= 0xFF
            segment.write_bytes(bytes(data[:starts[-1] + 30]))
            with live_ingress(env_for(replacement.bootstrap_servers, spool), tmp_path / "ingress-3.log") as ingress:
                wait_for(lambda: metric(ingress.url, "passpost_spool_events") == 0, 60, "the spool to drain")
                assert metric(ingress.url, 'passpost_spool_corrupt_records_total{kind="torn"}') == 1
                assert metric(ingress.url, 'passpost_spool_corrupt_records_total{kind="checksum"}') == 1
                assert metric(ingress.url, "passpost_spool_forwarded_events_total") == 8
            good = {i for a in answers[:4] + answers[5:9] for i in a.event_ids}
            bad = {i for a in (answers[4], answers[9]) for i in a.event_ids}
            on_topic = {e["event_id"] for e in topic_events(replacement.bootstrap_servers, accepted | good)}
            assert good <= on_topic and not bad & on_topic
    assert len(list((spool / "quarantine").iterdir())) == 2


def test_a_full_spool_answers_503_and_readyz_says_so(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # no Kafka at all: everything is spooled from the start
    env = env_for(nowhere, tmp_path / "spool", PASSPOST_SPOOL_MAX_BYTES=str(64 * 1024))
    with live_ingress(env, tmp_path / "ingress.log") as ingress:
        with client_for(ingress.url) as client:
            statuses = []
            for n in range(200):
                statuses.append(client.post("/postbacks/passes", content=postback(2, n, items=3)))
                if statuses[-1].status_code != 200:
                    break
            refused = statuses[-1]
            assert [r.status_code for r in statuses[:-1]] == [200] * (len(statuses) - 1) and len(statuses) > 10
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
            assert refused.json()["error"] == "spool_full"
            # A dead letter that does not fit is not acknowledged either.
            assert client.post("/postbacks/passes", content=b"x" * 70000).status_code == 503
        assert httpx.get(f"{ingress.url}/readyz", timeout=5).status_code == 503
        assert metric(ingress.url, 'passpost_spool_refusals_total{reason="full"}') == 2
        # SIGTERM with no Kafka to forward to: out within the drain time, the records kept.
        stopping = time.monotonic()
        ingress.process.send_signal(signal.SIGTERM)
        assert ingress.process.wait(30) == 0
        assert time.monotonic() - stopping < 3 + DEADLINE + 5
    assert list((tmp_path / "spool").glob("*.seg"))
    assert re.search(r"stopping with \d+ records in the spool", (tmp_path / "ingress.log").read_text())
    refusals = [line for line in (tmp_path / "ingress.log").read_text().splitlines() if "answering 503" in line]
    assert refusals and all("the spool holds" in line and "Kafka did not confirm" not in line for line in refusals)


def test_a_spool_dir_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    port = free_port()
    completed = subprocess.run(
        [sys.executable, "-m", "passpost", "serve", "--port", str(port)], capture_output=True, text=True, timeout=60,
        env={**os.environ, **env_for(f"127.0.0.1:{free_port()}", blocker / "spool")})
    assert completed.returncode == 2
    assert re.fullmatch(r"[^\n]*PASSPOST_SPOOL_DIR: cannot use \S+/file/spool: Not a directory\n", completed.stderr), \
        completed.stderr


__all__ = ["LiveIngress", "wait_until_ready"]
