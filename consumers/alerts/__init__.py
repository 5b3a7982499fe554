"""The alerts consumer: failure and unknown status codes become grouped notifications.

``rules`` decides which events alert and how loudly, ``grouping`` turns them into a few
notifications per group, ``sinks`` delivers them (Alertmanager, a webhook, the log),
``engine`` ties them together transactionally and ``store`` keeps its state across restarts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AlertsConsumer"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the rules (which `passpost.settings` checks) load without the Kafka runtime.
    if name == "AlertsConsumer":
        from .consumer import AlertsConsumer

        return AlertsConsumer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
