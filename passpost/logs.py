"""Logging set-up: readable lines for people, one JSON object per line for machines.

Callers pass structured fields as ``extra={"fields": {...}}``; the text format appends
them as ``key=value``, the JSON format merges them into the object. Nothing here knows
what a token or an email address is, so callers must never pass one.
"""

from __future__ import annotations

import json
import json.encoder
import logging
import sys
import threading
import time
from typing import Any, TextIO

from passpost import kafka_health, tracing


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        ids = tracing.current_ids()  # None when tracing is off: one test
        if ids is not None:
            line += f" trace={ids[0]} span={ids[1]}"
        return line


def _encoder() -> Any:
    # json.dumps with options, or JSONEncoder.encode, builds the C encoder anew for every
    # call: it is made once here, so a line costs its encoding alone (BENCHMARKS.md, 925c5de).
    # The pure-Python encoder is the fallback where the C one is missing.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return json.JSONEncoder(default=str, ensure_ascii=False).iterencode
    return make(None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False, True)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._encode = _encoder()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        ids = tracing.current_ids()  # the span the line was written in; None when tracing is off
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return "".join(self._encode(entry, 0))

    def _utc_time(self, created: float) -> str:
        """``datetime.fromtimestamp(created, utc).isoformat(timespec="milliseconds")``, its
        seconds formatted once a second rather than for every line (BENCHMARKS.md, 925c5de)."""
        second = int(created)
        micros = round((created - second) * 1e6)  # as datetime.fromtimestamp rounds
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{micros // 1000:03d}+00:00"


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: a warning or worse at once (with every line before it), the
    rest at most ``FLUSH_SECONDS`` later, or as soon as ``FLUSH_BYTES`` are waiting.

    The ingress writes an access line per request, so a line must not cost a write and a
    flush of its own, in-process or where the stream is a pipe to the container runtime
    (BENCHMARKS.md, issue 13). Access logs are batched the same way by nginx (``buffer=``,
    ``flush=``). What a batch holds is lost if the process is killed outright (SIGKILL,
    the OOM killer): at most ``FLUSH_SECONDS`` of info lines. On a normal exit,
    ``logging.shutdown`` flushes it.
    """

    FLUSH_SECONDS = 0.1
    FLUSH_BYTES = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if record.levelno >= logging.WARNING or self._size >= self.FLUSH_BYTES:
            self._write()
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every_interval, name="passpost-log-flush",
                                             daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as StreamHandler: a closed or broken stream must not stop the caller
            self.handleError(logging.makeLogRecord({"msg": "writing log lines failed"}))

    def _flush_every_interval(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            self.flush()


def configure(log_format: str = "text", level: str = "info") -> None:
    # Left out of every record: the caller's file and line (a walk up the stack), thread, process
    # and multiprocessing names. No format here prints them, and the ingress writes a line per
    # request (the logging HOWTO's "Optimization"; what it saves: BENCHMARKS.md, 925c5de).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for replaced in root.handlers:  # a batching handler replaced must not take its waiting lines with it
        replaced.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed reconnect at ERROR with a traceback; the ingress reports
    # Kafka trouble itself (503s, readiness, metrics), so keep aiokafka to warnings and above.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    # aiokafka's per-attempt lines (a refused connection, a coordinator dropped) go to DEBUG and
    # one line per broker or coordinator lost and back replaces them (passpost/kafka_health.py).
    kafka_health.install()
    # The server's own access log prints the query string, which can hold a token.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO (schema registry, alert sinks), URL included, which may hold
    # credentials; the callers log failures themselves.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))

