"""What a consumer is: a class that takes a batch of decoded events and writes it to its sink.

The contract, which is all a consumer author needs to know:

- ``write(batch)`` is called with events in offset order per partition. When it returns,
  the batch must be durable in the sink: the runtime then commits the batch's offsets.
  What it raises says what happens next (``errors.py``): ``RetryLater`` (or an ``OSError``)
  commits nothing and offers the same batch again after a capped exponential backoff, until
  it succeeds, the process is stopped, or the partitions are revoked (then another member
  gets the records again); ``PoisonBatch`` has the events written one by one, and those
  still refused go to the dead-letter topic; anything else is a bug and stops the consumer,
  uncommitted. So ``write`` must be idempotent: a batch may be written more than once
  (de-duplicate on ``event_id``). A batch may be empty and carry only ``next_offsets``.
- ``stopping`` is set when the runtime stops: a sink waiting to retry inside ``write``
  gives up at once (``backoff.Retry`` does that). So an instance runs once: make a new
  consumer for another ``Runner``.
- ``validate(event)`` (optional) returns a reason to refuse an event; the runtime sends it
  to the consumer's dead-letter topic, confirmed, before ``write`` sees the rest.
- A sink that stores columns sets ``columnar = True``: the runtime then decodes each batch
  straight into ``batch.columns`` (one list per event field, ``Columns``), without an event
  object per record; ``batch.items`` and ``batch.events`` still work, built when asked.
- A sink that can store offsets with its rows (a database) subclasses ``ExactlyOnceConsumer``:
  it writes ``batch.next_offsets`` in the same transaction as the rows and implements
  ``load_offsets``: on every assignment the runtime seeks to what the sink stored (a
  partition the sink has never seen starts as a fresh one). That is exactly once. It also
  implements ``check_topic``: offsets are only valid for the topic they were read from, so
  the sink keeps the topic's identity (cluster id and topic id) with them and refuses to
  start on another (``identity.check`` does the comparison).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from passpost.consumers.runtime.health import Route
from passpost.schemas.codec import FIELD_NAMES
from passpost.schemas.event import PassPostback
from passpost.settings import Settings
from passpost.topic_metadata import TopicIdentity


@dataclass(frozen=True, slots=True)
class Item:
    """One decoded event and where it came from."""

    event: PassPostback
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Columns:
    """A batch's events field by field, for sinks that store columns (``Consumer.columnar``).

    ``fields`` holds every field of the event schema by name (``codec.FIELD_NAMES`` order), one
    list each, with the values ``PassPostback.to_record`` gives (timestamps as integer
    microseconds since the epoch, UTC; ``outcome`` as its symbol; ``extra`` as a dict);
    ``topics``, ``partitions`` and ``offsets`` say where each event was read.
    """

    fields: dict[str, list[Any]]
    topics: list[str]
    partitions: list[int]
    offsets: list[int]

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def of(cls, items: Sequence[Item]) -> Columns:
        records = [item.event.to_record() for item in items]
        return cls({name: [record[name] for record in records] for name in FIELD_NAMES},
                   [item.topic for item in items], [item.partition for item in items],
                   [item.offset for item in items])

    def items(self) -> list[Item]:
        names = list(self.fields)
        return [Item(PassPostback.from_record(dict(zip(names, values, strict=True))), topic, partition, offset)
                for values, topic, partition, offset in zip(zip(*self.fields.values()), self.topics,
                                                            self.partitions, self.offsets, strict=True)]

    def select(self, rows: Sequence[int]) -> Columns:
        """The rows at positions ``rows``, in that order."""
        return Columns({name: [values[row] for row in rows] for name, values in self.fields.items()},
                       [self.topics[row] for row in rows], [self.partitions[row] for row in rows],
                       [self.offsets[row] for row in rows])


class Batch:
    """The events to write, as ``items`` (an ``Item`` each), or, for a consumer that asked for them
    (``Consumer.columnar``), as ``columns``: either view works on any batch, the other is built on demand."""

    __slots__ = ("_columns", "_items", "next_offsets")

    def __init__(self, items: Sequence[Item] | None = None, next_offsets: dict[TopicPartition, int] | None = None,
                 *, columns: Columns | None = None) -> None:
        self._items = items if items is not None or columns is not None else []
        self._columns = columns
        # Next offset to read per partition once this batch is written: it covers records that
        # went to the dead-letter topic too, so a sink that stores offsets skips them for good.
        self.next_offsets: dict[TopicPartition, int] = {} if next_offsets is None else next_offsets

    @property
    def items(self) -> Sequence[Item]:
        if self._items is None:
            assert self._columns is not None
            self._items = self._columns.items()
        return self._items

    @property
    def columns(self) -> Columns:
        if self._columns is None:
            self._columns = Columns.of(self.items)
        return self._columns

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else len(self.columns)

    @property
    def events(self) -> list[PassPostback]:
        return [item.event for item in self.items]


class Consumer(abc.ABC):
    """Base class of consumers. Subclass, set ``name``, implement ``write``.

    ``name`` is the one place a consumer's name comes from: its entry point in the
    ``passpost.consumers`` group has the same name (``load_consumer`` checks), and its consumer
    group (``passpost-NAME``), dead-letter topic and metric labels are derived from it."""

    name: str = ""
    #: True: the runtime decodes a batch straight into ``batch.columns`` (one list per field) without a
    #: ``PassPostback`` per event, which costs the event loop more than twice the decoding (a sink that stores
    #: columns, like the analytics table, needs no object per event). ``batch.items`` still works, built on demand.
    columnar: bool = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The flag of earlier versions: honoured silently it would now mean at-least-once without a word.
        if "stores_offsets" in vars(cls):
            raise TypeError(f"{cls.__qualname__}: stores_offsets is gone; subclass ExactlyOnceConsumer (and implement "
                            "load_offsets and check_topic) for a sink that stores its offsets")

    def first_read_since(self) -> float | None:
        """Where a partition this consumer has never read (no stored or committed offset) starts:
        ``None`` for its beginning (a projection wants the whole history), or a number of seconds
        back from now (records older than that are skipped: a notifier's first start should not
        report last week)."""
        return None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Put the consumer's own metrics on the runtime's ``/metrics``. Called before ``start``."""

    def routes(self) -> Mapping[str, Route]:
        """GET paths of the consumer's own, served on the runtime's HTTP port beside ``/metrics``."""
        return {}

    def serving_at(self, url: str) -> None:
        """Called before ``start`` with the base URL of the runtime's HTTP port (where ``routes`` answer)."""

    async def start(self) -> None:
        """Open connections. Called once before the first batch."""

    @abc.abstractmethod
    async def write(self, batch: Batch) -> None:
        """Make ``batch`` durable in the sink, or raise ``RetryLater`` or ``PoisonBatch`` (see the module's text)."""

    def validate(self, event: PassPostback) -> str | None:
        """A reason to dead-letter ``event`` instead of writing it, or None."""
        return None

    async def close(self) -> None:
        """Release connections. Called once, after the last commit."""


class ExactlyOnceConsumer(Consumer):
    """A consumer whose sink stores each batch's ``next_offsets`` in the same transaction as its rows.

    The runtime then starts every assigned partition from the sink's offsets, not the consumer
    group's: what the sink has is exactly what was read, whatever crashes or redeliveries happen."""

    @abc.abstractmethod
    async def check_topic(self, topic: str, identity: TopicIdentity) -> None:
        """Called before ``load_offsets``, at the start and at each assignment: raise
        ``identity.ForeignOffsets`` if the offsets stored for ``topic`` were read from another
        identity (a re-created topic, another cluster), else keep ``identity`` with them."""

    @abc.abstractmethod
    async def load_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to read of each of ``partitions`` the sink knows; the others start fresh."""
