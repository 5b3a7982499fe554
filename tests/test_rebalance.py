"""A rebalance while a batch is in flight (consumers/runtime/rebalance.py), against a fake broker."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from passpost.backoff import Backoff
from passpost.consumers.runtime.assignment import Assignment
from passpost.consumers.runtime.commit import Commit
from passpost.consumers.runtime.consumer import Batch, Item
from passpost.consumers.runtime.decode import FetchedRecords
from passpost.consumers.runtime.errors import RetryLater
from passpost.consumers.runtime.health import ConsumerMetrics
from passpost.consumers.runtime.rebalance import Rebalance
from passpost.consumers.runtime.refusals import Refusals
from passpost.consumers.runtime.write import Write
from passpost.schemas.codec import decode
from passpost.topic_metadata import TopicIdentity
from tests.fake_source import TOPIC, FakeSource, Sink, event, record

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class Wired:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.source = FakeSource(logs={P0: [record(0, n, event()) for n in range(3)], P1: []})
        metrics = ConsumerMetrics(sink.name)
        self.refusals = Refusals(sink.name, Backoff(initial=30, cap=30), sink.stopping)
        self.commit = Commit(sink.name, self.source, metrics)

        async def lookup() -> TopicIdentity:
            return TopicIdentity("cluster", "topic")

        async def dead_letter(kept: ConsumerRecord, error: str, detail: str) -> None:
            raise AssertionError("no dead letter expected")

        self.assignment = Assignment(sink, TOPIC, self.source, lookup, Backoff(), sink.stopping)
        self.write = Write(sink, self.commit, self.refusals, dead_letter, metrics)
        self.in_flight = asyncio.Lock()
        self.rebalance = Rebalance(self.in_flight, self.assignment, self.write, self.commit, self.refusals)

    def submit_all_of_p0(self) -> None:
        records = self.source.logs[P0]
        items = [Item(decode(r.value), r.topic, r.partition, r.offset) for r in records]
        self.write.submit(Batch(items, {P0: 3}), FetchedRecords({P0: records}), 0.0)


def test_a_revocation_in_the_middle_of_a_batch_waits_for_it_to_be_written_and_committed() -> None:
    stall = asyncio.Event()
    wired = Wired(Sink(stall=stall))

    async def scenario() -> list[str]:
        await wired.rebalance.on_partitions_assigned([P0, P1])
        wired.submit_all_of_p0()
        order: list[str] = []
        revoking = asyncio.create_task(wired.rebalance.on_partitions_revoked([P0, P1]))
        await asyncio.sleep(0.01)
        order.append(f"revoked: {revoking.done()}, commits: {len(wired.source.commits)}")
        stall.set()
        await asyncio.wait_for(revoking, 2)
        order.append(f"revoked: {revoking.done()}, commits: {len(wired.source.commits)}")
        return order

    assert asyncio.run(scenario()) == ["revoked: False, commits: 0", "revoked: True, commits: 1"]
    assert wired.source.commits == [{P0: 3}]
    assert wired.assignment.applied == set() and wired.commit.positions == {}


def test_a_revocation_abandons_a_batch_the_sink_keeps_refusing_and_the_next_owner_reads_it_again() -> None:
    wired = Wired(Sink([RetryLater("down")] * 1000))

    async def scenario() -> dict[TopicPartition, int] | None:
        await wired.rebalance.on_partitions_assigned([P0, P1])
        generation = wired.assignment.generation
        wired.submit_all_of_p0()
        await asyncio.sleep(0.01)  # refused once: waiting 30 s to retry
        await asyncio.wait_for(wired.rebalance.on_partitions_revoked([P0, P1]), 1)
        assert wired.assignment.usable({P0: wired.source.logs[P0]}, generation) == {}  # a stale fetch is dropped
        # This member gets P0 back: it starts where the group committed, so nothing is skipped.
        await wired.rebalance.on_partitions_assigned([P0])
        return wired.source.positions

    assert asyncio.run(scenario()) == {P0: 0, P1: 0}
    assert wired.source.commits == [] and wired.sink.written == []
    assert wired.refusals.since is None and wired.refusals.revoking is False
