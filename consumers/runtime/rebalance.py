"""What a rebalance does to the batch in flight and to where partitions start.

Revoked partitions are given up only after the batch in flight is written and committed, or
abandoned uncommitted if the sink keeps refusing it (no more retries once a revocation
waits: the next owner reads it again). Assigned partitions reach the sink only once their
start positions are applied (``assignment.py``). Both hold the runner's in-flight lock, which
the loop holds while it decodes and hands on a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import ConsumerRebalanceListener, TopicPartition

from passpost.consumers.runtime.assignment import Assignment
from passpost.consumers.runtime.commit import Commit
from passpost.consumers.runtime.refusals import Refusals
from passpost.consumers.runtime.write import Write


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, in_flight: asyncio.Lock, assignment: Assignment, write: Write, commit: Commit,
                 refusals: Refusals) -> None:
        self.in_flight = in_flight
        self.assignment = assignment
        self.write = write
        self.commit = commit
        self.refusals = refusals

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.refusals.revoking = True
        try:
            async with self.in_flight:
                await self.write.join()
                self.assignment.revoke(revoked)
                self.commit.forget(revoked)
        finally:
            self.refusals.revoking = False

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # aiokafka fetches newly assigned partitions from their committed offsets while this runs;
        # holding the lock keeps any such record from the sink until the loop fetches it again.
        async with self.in_flight:
            starts = await self.assignment.assign(assigned)
            if starts is None:  # stopped before they could be read: nothing may reach the sink
                return
            self.commit.start(starts)
            self.refusals.cleared()  # a batch abandoned at the revocation is read again from here
