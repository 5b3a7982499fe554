"""The consumer runtime: write a ``Consumer`` subclass, the runtime does the rest (see ``consumer.py``)."""

from passpost.backoff import Backoff, Retry
from passpost.consumers.runtime.consumer import Batch, Columns, Consumer, ExactlyOnceConsumer, Item
from passpost.consumers.runtime.dead_letters import dead_letter_topic
from passpost.consumers.runtime.errors import CannotRun, PoisonBatch, RetryLater
from passpost.consumers.runtime.runner import (
    Runner,
    UnknownConsumer,
    group_id,
    load_consumer,
    registered,
)

__all__ = ["Backoff", "Batch", "CannotRun", "Columns", "Consumer", "ExactlyOnceConsumer", "Item", "PoisonBatch",
           "Retry", "RetryLater", "Runner", "UnknownConsumer", "dead_letter_topic", "group_id", "load_consumer",
           "registered"]
