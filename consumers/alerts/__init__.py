"""The alerts consumer: failure and unknown status codes become grouped notifications.

``rules`` decides which events alert and how loudly, ``grouping`` turns them into a few
notifications per group, ``sinks`` delivers them (Alertmanager, a webhook, the log),
``engine`` ties them together transactionally and ``store`` keeps its state across restarts.
"""

from __future__ import annotations

from .consumer import AlertsConsumer

__all__ = ["AlertsConsumer"]
