"""Stored offsets belong to one topic on one cluster.

A topic deleted and re-created under the same name, or the same name on another cluster,
starts its offsets again at 0: offsets stored for the old one would silently skip (or
re-read) records of the new one. Sinks that store offsets keep the ``TopicIdentity``
(cluster id and topic id) they were read from and the runtime hands them the current
one before any offset is used; ``check`` is the comparison they share.
"""

from __future__ import annotations

import logging

from passpost.consumers.runtime.errors import CannotRun
from passpost.topic_metadata import TopicIdentity

log = logging.getLogger("passpost.consumer")

__all__ = ["ForeignOffsets", "TopicIdentity", "check"]


class ForeignOffsets(CannotRun):
    """The store holds offsets of another incarnation of the topic, or of another cluster."""


def check(topic: str, stored: str | None, current: TopicIdentity, *, holds_offsets: bool, store: str,
          start_over: str) -> None:
    """Raise ``ForeignOffsets`` unless offsets stored under ``stored`` (a ``TopicIdentity.key()``) are
    the current topic's. ``store`` names the store for the message, ``start_over`` says how to start over."""
    if not holds_offsets or stored == current.key():
        return
    if stored is None:
        # Written before stores kept the identity: nothing to compare with, so it is adopted.
        log.warning("%s: its offsets of topic %s carry no topic identity; taking them as %s's", store, topic, current)
        return
    old = TopicIdentity.from_key(stored)
    origin = ("another Kafka cluster" if old.cluster_id != current.cluster_id
              else "an earlier topic of that name (deleted and re-created since)")
    raise ForeignOffsets(f"{store} holds offsets of topic {topic} from {origin} ({old}; now {current}): "
                         f"{start_over}")
