"""Where partitions start (consumers/runtime/assignment.py), against a fake broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from aiokafka import TopicPartition

from passpost.backoff import Backoff
from passpost.consumers.runtime.assignment import Assignment
from passpost.consumers.runtime.consumer import ExactlyOnceConsumer
from passpost.consumers.runtime.identity import ForeignOffsets
from passpost.kafka import KafkaUnavailable
from passpost.topic_metadata import TopicIdentity, TopicIdsUnsupported
from tests.fake_source import TOPIC, FakeSource, Sink, event, record

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
IDENTITY = TopicIdentity("cluster", "topic-id")


class Notifier(Sink):
    """Reads only the last hour on its first start, as the alerts consumer does."""

    def first_read_since(self) -> float | None:
        return 3600.0


class Stored(Sink, ExactlyOnceConsumer):
    def __init__(self, stored: dict[TopicPartition, int], refuse_topic: BaseException | None = None) -> None:
        super().__init__()
        self.stored = stored
        self.refuse_topic = refuse_topic
        self.calls: list[str] = []

    async def check_topic(self, topic: str, identity: TopicIdentity) -> None:
        self.calls.append(f"check_topic {topic} {identity.key()}")
        if self.refuse_topic is not None:
            raise self.refuse_topic

    async def load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self.calls.append("load_offsets")
        return {tp: offset for tp, offset in self.stored.items() if tp in partitions}


def assignment(consumer: Sink, source: FakeSource, lookup_answers: list[object] | None = None) -> Assignment:
    answers = list(lookup_answers or [])

    async def lookup() -> TopicIdentity | None:
        answer = answers.pop(0) if answers else IDENTITY
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[return-value]

    return Assignment(consumer, TOPIC, source, lookup, Backoff(initial=0.001, cap=0.01), consumer.stopping)


def test_a_record_appended_while_a_first_start_looks_up_its_moment_is_not_skipped() -> None:
    """Defect: the time lookup found nothing, the end was read after a record landed, and that record was skipped."""
    source = FakeSource(logs={P0: []})
    now_ms = int(time.time() * 1000)
    appended = lambda: source.append(P0, event(), now_ms)  # noqa: E731
    # Whichever of the two lookups runs first, a record lands right after it.
    source.after["offsets_for_times"] = appended
    source.after["end_offsets"] = appended
    starts = asyncio.run(assignment(Notifier(), source).assign([P0]))
    assert starts == {P0: 0}
    assert source.positions == {P0: 0}


def test_a_first_start_skips_what_is_older_than_its_moment_and_keeps_what_is_newer() -> None:
    source = FakeSource(logs={P0: [], P1: []})
    old_ms, new_ms = int((time.time() - 7200) * 1000), int(time.time() * 1000)
    for _ in range(3):
        source.append(P0, event(), old_ms)
    source.append(P0, event(), new_ms)
    source.append(P1, event(), old_ms)
    starts = asyncio.run(assignment(Notifier(), source).assign([P0, P1]))
    assert starts == {P0: 3, P1: 1}


def test_a_plain_consumer_starts_at_the_groups_committed_offset_else_the_beginning() -> None:
    source = FakeSource(logs={P0: [], P1: []}, committed_offsets={P1: 5})
    step = assignment(Sink(), source)
    assert asyncio.run(step.assign([P0, P1])) == {P0: 0, P1: 5}
    assert step.applied == {P0, P1} and step.generation == 1


def test_an_exactly_once_consumer_starts_at_its_stored_offsets_after_its_topic_is_checked() -> None:
    source = FakeSource(logs={P0: [], P1: []}, committed_offsets={P0: 9, P1: 9})
    consumer = Stored({P0: 4})
    assert asyncio.run(assignment(consumer, source).assign([P0, P1])) == {P0: 4, P1: 0}  # the group's 9 is not used
    assert consumer.calls == [f"check_topic {TOPIC} {IDENTITY.key()}", "load_offsets"]
    assert "committed" not in source.calls


@pytest.mark.parametrize("refusal", [ForeignOffsets("offsets of an earlier topic"),
                                     TopicIdsUnsupported("Kafka 2.8 does not report topic ids")])
def test_a_refusal_that_asking_again_cannot_cure_stops_the_consumer_unassigned(refusal: Exception) -> None:
    """TopicIdsUnsupported was a KafkaUnavailable, retried for ever by the loops that retry those."""
    source = FakeSource(logs={P0: []})
    consumer = Stored({}, refuse_topic=refusal) if isinstance(refusal, ForeignOffsets) else Stored({})
    step = assignment(consumer, source, [refusal] if isinstance(refusal, TopicIdsUnsupported) else [])
    assert asyncio.run(asyncio.wait_for(step.assign([P0]), 5)) is None
    assert step.fatal is refusal and consumer.stopping.is_set()
    assert step.applied == set() and source.positions == {}


def test_kafka_unavailable_while_reading_the_start_is_retried() -> None:
    source = FakeSource(logs={P0: []})
    consumer = Stored({P0: 2})
    step = assignment(consumer, source, [KafkaUnavailable("broker restarting"), KafkaUnavailable("still")])
    assert asyncio.run(asyncio.wait_for(step.assign([P0]), 5)) == {P0: 2}
    assert step.fatal is None


def test_records_of_a_fetch_that_straddled_a_rebalance_or_of_an_unapplied_partition_are_not_used() -> None:
    source = FakeSource(logs={P0: [], P1: []})
    step = assignment(Sink(), source)
    asyncio.run(step.assign([P0]))
    fetched = {P0: [record(0, 0, b"a")], P1: [record(1, 0, b"b")]}
    assert step.usable(fetched, step.generation) == {P0: fetched[P0]}  # P1's start is not applied
    generation = step.generation
    step.revoke([P0])
    assert step.usable(fetched, generation) == {}


def test_waiting_for_the_topic_says_why_once_and_asks_again_after_kafka_unavailable() -> None:
    consumer = Stored({})
    step = assignment(consumer, FakeSource(), [None, KafkaUnavailable("restarting"), None, IDENTITY])
    reasons: list[str] = []
    assert asyncio.run(step.wait_for_topic(reasons.append, 0.001)) is True
    assert reasons == [f"topic {TOPIC} does not exist yet"]
    assert consumer.calls == [f"check_topic {TOPIC} {IDENTITY.key()}"]


def test_waiting_for_the_topic_stops_at_topic_ids_unsupported_instead_of_asking_for_ever() -> None:
    step = assignment(Sink(), FakeSource(), [TopicIdsUnsupported("too old")])
    with pytest.raises(TopicIdsUnsupported):
        asyncio.run(asyncio.wait_for(step.wait_for_topic(lambda reason: None, 0.001), 5))


def test_waiting_for_the_topic_ends_at_a_stop() -> None:
    consumer = Sink()
    step = assignment(consumer, FakeSource(), [None] * 1000)

    async def scenario() -> bool:
        asyncio.get_running_loop().call_later(0.05, consumer.stopping.set)
        return await step.wait_for_topic(lambda reason: None, 0.01)

    assert asyncio.run(scenario()) is False
