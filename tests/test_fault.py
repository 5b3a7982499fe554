"""The broker goes away during a stream of posts to a live `passpost serve`.

What must hold: every postback answered 200 is on the topic afterwards, and no postback
is answered 200 while the broker is down. The ingress runs as its own process, the way
it runs in production, and the broker is a real one that is stopped and started again.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fastavro
import httpx
import pytest

from tests.kafka_helpers import create_topics, read_all
from tests.live import LiveIngress, live_ingress
from tests.test_spool import wait_for

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))
TOKEN = "fault-token"


@pytest.fixture
def ingress(local_kafka, tmp_path: Path) -> Iterator[LiveIngress]:  # type: ignore[no-untyped-def]
    create_topics(local_kafka.bootstrap_servers, ["pass-postbacks.v1", "pass-postbacks.dlq.v1"])
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": local_kafka.bootstrap_servers, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_PRODUCE_TIMEOUT_SECONDS": "2", "PASSPOST_LOG_LEVEL": "warning"}
    with live_ingress(env, tmp_path / "ingress.log") as running:
        yield running


@dataclass
class Answer:
    serial: str
    sent: float
    answered: float
    status: int
    event_ids: list[str]


def postback(serial: str, status_code: str = "N801") -> bytes:
    return (f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>{status_code}</STATUSCODE>"
            f"<SERIALNUMBER>{serial}</SERIALNUMBER><TIMESTAMP>2013-11-26T11:37:11-05:00</TIMESTAMP></POSTBACK>").encode()


def keep_posting(url: str, worker: int, stop: threading.Event, answers: list[Answer],
                 status_codes: Sequence[str] = ("N801",)) -> None:
    """Post one postback after another until ``stop``; the n-th has ``status_codes[n % len(status_codes)]``."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15) as client:
        number = 0
        while not stop.is_set():
            number += 1
            serial = f"w{worker}-{number}"
            sent = time.monotonic()
            try:
                response = client.post("/postbacks/passes",
                                       content=postback(serial, status_codes[number % len(status_codes)]))
                status = response.status_code
                ids = response.json().get("event_ids", []) if status == 200 else []
            except httpx.HTTPError:
                status, ids = 0, []
            answers.append(Answer(serial, sent, time.monotonic(), status, ids))
            if status != 200:
                time.sleep(0.05)


def answered_since(answers: list[Answer], moment: float) -> dict[str, int]:
    """How many posts sent after ``moment`` each worker has had answered."""
    counts: dict[str, int] = {}
    for answer in list(answers):
        if answer.sent > moment:
            worker = answer.serial.split("-")[0]
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def test_no_postback_answered_200_is_lost_when_the_broker_goes_away(local_kafka, ingress: LiveIngress) -> None:  # type: ignore[no-untyped-def]
    answers: list[Answer] = []
    stop = threading.Event()
    workers = [threading.Thread(target=keep_posting, args=(ingress.url, n, stop, answers)) for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: sum(a.status == 200 for a in list(answers)) >= 20, 60, "the stream to be answered")
        local_kafka.stop()
        down_since = time.monotonic()
        # Each worker has two posts answered while the broker is down: at least one produce
        # deadline each, and a post made after the first of them was refused.
        wait_for(lambda: len(answered_since(answers, down_since)) == len(workers)
                 and min(answered_since(answers, down_since).values()) >= 2, 60, "posts answered during the outage")
        up_from = time.monotonic()
        local_kafka.start()
        wait_for(lambda: any(a.status == 200 and a.sent > up_from + 1 for a in list(answers)), 60,
                 "a post sent once the broker is back to be answered 200")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)

    during_outage = [a for a in answers if a.sent > down_since and a.answered < up_from]
    before = [a for a in answers if a.answered < down_since]
    after = [a for a in answers if a.sent > up_from + 1]
    assert before and all(a.status == 200 for a in before), "the stream must start healthy"
    assert during_outage, "some postbacks must have been sent while the broker was down"
    assert [a.status for a in during_outage if a.status == 200] == []
    assert {a.status for a in during_outage} <= {503}
    assert any(a.status == 200 for a in after), "the ingress must recover once the broker is back"

    accepted = {event_id for a in answers if a.status == 200 for event_id in a.event_ids}
    on_topic: set[str] = set()
    deadline = time.monotonic() + 30
    while not accepted <= on_topic and time.monotonic() < deadline:
        records = read_all(local_kafka.bootstrap_servers, "pass-postbacks.v1", timeout=3)
        on_topic = {fastavro.schemaless_reader(io.BytesIO(r.value[10:]), SCHEMA)["event_id"] for r in records}
    missing = accepted - on_topic
    assert not missing, f"{len(missing)} of {len(accepted)} postbacks answered 200 are not on the topic"

    ingress.process.send_signal(signal.SIGTERM)
    assert ingress.process.wait(30) == 0, ingress.log.read_text()
