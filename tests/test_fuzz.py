"""The seeded mutation fuzzer (tests/fuzz.py) against a live ingress and the real broker.

At least 5,000 inputs within 60 s, a different seed each day so that CI keeps exploring
(the seed is printed: a failure is reproduced with ``python -m tests.fuzz --seed N``).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest

from tests.fuzz import Tally, cases, check_topics, run
from tests.kafka_helpers import create_topics, unique_topic
from tests.live import live_ingress

pytestmark = pytest.mark.kafka

INPUTS = 5000


def test_the_same_seed_makes_the_same_inputs() -> None:
    first, again, other = iter(cases(3)), iter(cases(3)), iter(cases(4))
    one = [next(first) for _ in range(200)]
    assert one == [next(again) for _ in range(200)]
    assert one != [next(other) for _ in range(200)]
    assert len({case.body for case in one}) > 150, "mutations vary"


def test_5000_mutated_postbacks_get_definite_answers_and_exact_counts(kafka_bootstrap: str, tmp_path: Path) -> None:
    seed = datetime.date.today().toordinal()
    print(f"fuzz seed {seed}")
    events, dead = unique_topic("fuzz-events"), unique_topic("fuzz-dlq")
    create_topics(kafka_bootstrap, [events, dead])
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_INGEST_TOKENS": "fuzz-token",
           "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead}
    log = tmp_path / "serve.log"
    tally = Tally()
    with live_ingress(env, log) as ingress:
        started = time.monotonic()
        asyncio.run(run(ingress.url, "fuzz-token", INPUTS, seed, 16, tally))
        elapsed = time.monotonic() - started
    print(f"{tally.summary()} in {elapsed:.1f} s; refusals {dict(tally.errors)}")
    assert tally.requests >= INPUTS and elapsed < 60
    # The mix reaches every branch: accepted, recovered or not, and refused for content.
    assert tally.statuses[200] > 500 and tally.statuses[400] > 500 and tally.statuses[422] > 30
    assert check_topics(tally, kafka_bootstrap, events, dead, log.read_text(errors="replace")) == []
