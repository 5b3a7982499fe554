"""Consumers by name: the classes registered under the ``passpost.consumers`` entry-point group.

The built-ins are registered the same way as any other distribution's, so ``passpost consume
NAME`` finds a consumer installed beside passpost without a change here.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from passpost.consumers.runtime.consumer import Consumer
from passpost.errors import ConfigurationError

ENTRY_POINT_GROUP = "passpost.consumers"


class UnknownConsumer(ConfigurationError, LookupError):
    """No consumer of that name is registered. ``str()`` is one line listing those that are."""


def registered() -> dict[str, type[Consumer]]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}  # type: ignore[misc]


def load_consumer(name: str) -> type[Consumer]:
    entries = registered()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise UnknownConsumer(f"no consumer named {name!r} (registered: {known})")
    consumer: type[Consumer] = entries[name].load()  # type: ignore[attr-defined]
    if consumer.name != name:  # the name is the class's; the entry point only finds it
        raise UnknownConsumer(f"the entry point {name!r} names {consumer.__module__}.{consumer.__qualname__}, whose "
                              f"name is {consumer.name!r}: register it as {consumer.name!r}")
    return consumer
