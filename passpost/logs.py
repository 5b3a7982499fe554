"""Logging set-up: readable lines for people, one JSON object per line for machines.

Callers pass structured fields as ``extra={"fields": {...}}``; the text format appends
them as ``key=value``, the JSON format merges them into the object. Nothing here knows
what a token or an email address is, so callers must never pass one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed reconnect at ERROR with a traceback; the ingress reports
    # Kafka trouble itself (503s, readiness, metrics), so keep aiokafka to warnings and above.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    if not any(isinstance(existing, _CoordinatorNotYetAvailable) for existing in coordinator.filters):
        coordinator.addFilter(_CoordinatorNotYetAvailable())
    # The server's own access log prints the query string, which can hold a token.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO (schema registry, alert sinks), URL included, which may hold
    # credentials; the callers log failures themselves.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


class _CoordinatorNotYetAvailable(logging.Filter):
    """A broker that has just started has no group coordinator for a moment, and aiokafka
    logs each retry of the look-up at ERROR. The consumer retries by itself (and its
    /readyz says when it has no partitions), so these lines are noise: logged at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "CoordinatorNotAvailable" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True
