"""The consumer runtime: write a ``Consumer`` subclass, the runtime does the rest (see ``consumer.py``)."""

from passpost.consumers.runtime.consumer import Batch, Consumer, Item
from passpost.consumers.runtime.errors import CannotRun
from passpost.consumers.runtime.runner import (
    Runner,
    UnknownConsumer,
    dead_letter_topic,
    group_id,
    load_consumer,
    registered,
)

__all__ = ["Batch", "CannotRun", "Consumer", "Item", "Runner", "UnknownConsumer", "dead_letter_topic", "group_id",
           "load_consumer", "registered"]
