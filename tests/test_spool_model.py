"""The spool (ingest/spool.py) against a model: a list of the records it must still forward.

Hypothesis drives one spool directory through appends, forwarding (Kafka confirming all,
part or none of what was read), crashes and reopens, and checks after every step that the
spool holds exactly the model's records, and that forwarding hands them out in append order.

A crash is the death of the process: its descriptors (the lock, the segment being written)
are closed by the kernel and nothing else happens; the page cache survives, so the cursor,
written without a sync, survives too. A crash in the middle of an append leaves part of the
batch in the segment: the records written whole may be forwarded (their request was never
answered 200, so a copy on the topic is a duplicate the vendor would resend anyway), the
torn tail must be cut at the next open and never be forwarded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from prometheus_client import CollectorRegistry

from passpost.ingest.spool import Spool, SpoolMetrics
from passpost.ingest.spool_format import Entry, encode_entry, frame, segment_sequence

# Small segments, so that appends roll over to new ones and forwarding crosses them.
SEGMENT_BYTES = 300

entries = st.builds(
    Entry,
    topic=st.sampled_from(["pass-postbacks.v1", "pass-postbacks.dlq.v1"]),
    key=st.none() | st.binary(max_size=8),
    value=st.binary(max_size=120),
    headers=st.lists(st.tuples(st.sampled_from(["request_id", "reason"]), st.binary(max_size=8)), max_size=2),
    spooled_at=st.floats(min_value=1.7e9, max_value=1.8e9, allow_nan=False),
)
batches = st.lists(entries, min_size=1, max_size=4)


def die(spool: Spool) -> None:
    """What the kernel does for a process that dies: close its descriptors, nothing more."""
    for fd in (spool._active_fd, spool._lock_fd):
        if fd is not None:
            os.close(fd)


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="spool-model-")
        self.loop = asyncio.new_event_loop()
        self.model: list[Entry] = []  # appended durably, not yet confirmed by Kafka: what must be forwarded
        self.spool: Spool | None = None
        self.registry = CollectorRegistry()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def segments(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if segment_sequence(name) is not None)

    @initialize()
    def open_fresh(self) -> None:
        self.reopen()

    def teardown(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: self.spool is None)
    @rule()
    def reopen(self) -> None:
        self.registry = CollectorRegistry()
        self.spool = Spool(self.directory, 1 << 30, SpoolMetrics(self.registry), segment_bytes=SEGMENT_BYTES)
        self.spool.open()
        assert self.spool.held == len(self.model)

    @precondition(lambda self: self.spool is not None)
    @rule(batch=batches)
    def append(self, batch: list[Entry]) -> None:
        assert self.spool is not None
        self.run(self.spool.append(batch))
        self.model += batch

    @precondition(lambda self: self.spool is not None)
    @rule(concurrent=st.lists(batches, min_size=2, max_size=4))
    def append_concurrently(self, concurrent: list[list[Entry]]) -> None:
        """Requests appending at once share a write and a sync, in the order they called."""
        assert self.spool is not None
        spool = self.spool

        async def all_at_once() -> None:
            await asyncio.gather(*(spool.append(batch) for batch in concurrent))

        self.run(all_at_once())
        for batch in concurrent:
            self.model += batch

    @precondition(lambda self: self.spool is not None)
    @rule(max_bytes=st.sampled_from([1, 200, 1024 * 1024]), data=st.data())
    def forward(self, max_bytes: int, data: st.DataObject) -> None:
        """Read what to send next; Kafka confirms the first ``confirmed`` of them (perhaps none)."""
        assert self.spool is not None
        batch = self.run(self.spool.read(max_bytes))
        if batch is None:
            assert self.model == [], "read() says nothing is left while records are unforwarded"
            return
        segment, items = batch
        read = [item for _, _, item in items]
        assert all(isinstance(item, Entry) for item in read), f"only whole records were written: {read}"
        assert read == self.model[:len(read)], "forwarded out of order, twice, or something never appended"
        confirmed = data.draw(st.integers(min_value=0, max_value=len(items)), label="confirmed")
        if confirmed:
            self.spool.confirmed(segment, items[confirmed - 1][1], confirmed)
            del self.model[:confirmed]

    @precondition(lambda self: self.spool is not None)
    @rule()
    def crash(self) -> None:
        assert self.spool is not None
        die(self.spool)
        self.spool = None

    @precondition(lambda self: self.spool is not None)
    @rule(batch=batches, data=st.data())
    def crash_mid_append(self, batch: list[Entry], data: st.DataObject) -> None:
        """The process dies while the batch is being written: only its first ``kept`` bytes
        reached the segment, and the request was never answered."""
        assert self.spool is not None
        self.run(self.spool.append(batch))
        die(self.spool)
        self.spool = None
        frames = [len(frame(encode_entry(entry))) for entry in batch]
        kept = data.draw(st.integers(min_value=0, max_value=sum(frames) - 1), label="kept")
        last = os.path.join(self.directory, self.segments()[-1])  # the batch is the tail of the newest
        os.truncate(last, os.path.getsize(last) - (sum(frames) - kept))
        whole = 0
        while whole < len(frames) and sum(frames[:whole + 1]) <= kept:
            whole += 1
        self.model += batch[:whole]  # written whole: found again, forwarded like the rest

    @precondition(lambda self: self.spool is not None)
    @rule()
    def drain(self) -> None:
        """Kafka confirms everything: the model's records come out in order, then nothing is left."""
        assert self.spool is not None
        forwarded: list[Entry] = []
        while (batch := self.run(self.spool.read())) is not None:
            segment, items = batch
            forwarded += [item for _, _, item in items]
            self.spool.confirmed(segment, items[-1][1], len(items))
        assert forwarded == self.model
        self.model = []
        assert not self.spool.holding
        assert self.segments() == [] and not os.path.exists(os.path.join(self.directory, "cursor"))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def holds_what_the_model_holds(self) -> None:
        if self.spool is None:
            return
        assert self.spool.held == len(self.model)
        assert self.spool.holding == bool(self.model)
        assert self.registry.get_sample_value("passpost_spool_events") == len(self.model)
        on_disk = sum(os.path.getsize(os.path.join(self.directory, name)) for name in self.segments())
        assert self.registry.get_sample_value("passpost_spool_bytes") == on_disk


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=50, stateful_step_count=30, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
