"""Writing a batch and committing it (consumers/runtime/write.py), against a fake broker and fake sinks."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from passpost.backoff import Backoff
from passpost.consumers.runtime.commit import Commit
from passpost.consumers.runtime.consumer import Batch, Item
from passpost.consumers.runtime.decode import FetchedRecords
from passpost.consumers.runtime.errors import PoisonBatch, RetryLater
from passpost.consumers.runtime.health import ConsumerMetrics
from passpost.consumers.runtime.refusals import Refusals
from passpost.consumers.runtime.write import Write
from passpost.schemas.codec import decode
from tests.fake_source import TOPIC, FakeSource, Sink, event, record

P0 = TopicPartition(TOPIC, 0)


class Steps:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.source = FakeSource(logs={P0: [record(0, n, event(serial_number=f"S{n}")) for n in range(4)]})
        self.metrics = ConsumerMetrics(sink.name)
        self.refusals = Refusals(sink.name, Backoff(initial=0.001, cap=0.01), sink.stopping)
        self.commit = Commit(sink.name, self.source, self.metrics)
        self.dead_letters: list[tuple[int, str, str]] = []
        self.write = Write(sink, self.commit, self.refusals, self.dead_letter, self.metrics)

    async def dead_letter(self, kept: ConsumerRecord, error: str, detail: str) -> None:
        self.dead_letters.append((kept.offset, error, detail))

    def batch(self) -> tuple[Batch, FetchedRecords]:
        records = self.source.logs[P0]
        items = [Item(decode(r.value), r.topic, r.partition, r.offset) for r in records]
        return Batch(items, {P0: records[-1].offset + 1}), FetchedRecords({P0: records})

    def sample(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"consumer": self.sink.name})


def test_offsets_are_committed_only_after_the_sink_has_the_batch() -> None:
    stall = asyncio.Event()
    steps = Steps(Sink(stall=stall))

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        await asyncio.sleep(0.01)
        assert steps.source.commits == []  # the sink has not returned yet
        stall.set()
        return await steps.write.join()

    assert asyncio.run(scenario()) is True
    assert steps.source.commits == [{P0: 4}] and len(steps.sink.written) == 1
    assert steps.commit.positions == {P0: 4}
    assert steps.sample("passpost_consumer_events_total") == 4


def test_a_refused_batch_is_retried_uncommitted_until_the_sink_takes_it() -> None:
    steps = Steps(Sink([RetryLater("db down"), ConnectionResetError("reset")]))

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        return await steps.write.join()

    assert asyncio.run(scenario()) is True
    assert steps.source.commits == [{P0: 4}]
    assert steps.sample("passpost_consumer_retries_total") == 2
    assert steps.refusals.since is None  # cleared by the commit: /readyz is not left stalled


def test_a_poison_batch_is_written_event_by_event_and_the_poison_dead_lettered() -> None:
    class Picky(Sink):
        async def write(self, batch: Batch) -> None:
            if any(event.serial_number == "S2" for event in batch.events):
                raise PoisonBatch("S2 breaks a constraint")
            self.written.append(batch)

    steps = Steps(Picky())

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        return await steps.write.join()

    assert asyncio.run(scenario()) is True
    assert [[e.serial_number for e in batch.events] for batch in steps.sink.written] == [
        ["S0"], ["S1"], [], ["S3"], []]
    # The sink's offsets move past the dead letter: at once, and with the whole batch's.
    assert [batch.next_offsets for batch in steps.sink.written if not batch.items] == [{P0: 3}, {P0: 4}]
    assert steps.dead_letters == [(2, "poison", "S2 breaks a constraint")]
    assert steps.source.commits == [{P0: 4}]


def test_a_sinks_bug_stops_the_consumer_uncommitted(caplog: pytest.LogCaptureFixture) -> None:
    steps = Steps(Sink([KeyError("bug")]))

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        return await steps.write.join()

    with caplog.at_level(logging.ERROR, logger="passpost.consumer"):
        assert asyncio.run(scenario()) is False
    assert isinstance(steps.write.fatal, KeyError) and steps.sink.stopping.is_set()
    assert steps.source.commits == []
    assert "neither RetryLater nor PoisonBatch" in caplog.text


def test_a_revocation_abandons_a_refused_batch_at_once_uncommitted() -> None:
    stall = asyncio.Event()
    steps = Steps(Sink([RetryLater("down")] * 1000, stall=stall))
    steps.refusals.backoff = Backoff(initial=30, cap=30)  # a retry would wait far longer than the test allows

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        await asyncio.sleep(0.01)
        steps.refusals.revoking = True  # as a rebalance does before it joins the batch in flight
        stall.set()
        return await asyncio.wait_for(steps.write.join(), 2)

    assert asyncio.run(scenario()) is False
    assert steps.source.commits == [] and steps.sink.written == []
    assert steps.refusals.since is not None  # refused, not cleared: nothing was committed


def test_a_failed_commit_is_said_and_the_batch_counts_as_written(caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import CommitFailedError

    steps = Steps(Sink())
    steps.source.commit_error = CommitFailedError("rebalanced")

    async def scenario() -> bool:
        steps.write.submit(*steps.batch(), 0.0)
        return await steps.write.join()

    with caplog.at_level(logging.WARNING, logger="passpost.consumer"):
        assert asyncio.run(scenario()) is True
    assert "commit failed" in caplog.text and "may be delivered again" in caplog.text
    assert steps.commit.positions == {P0: 4}
