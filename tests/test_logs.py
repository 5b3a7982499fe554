"""Log formats (passpost/logs.py): one JSON object per line when asked."""

from __future__ import annotations

import io
import json
import logging
import random
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from passpost.logs import BatchingStreamHandler, JsonFormatter, TextFormatter


def record(message: str = "request", **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("passpost.access", logging.INFO, __file__, 1, message, None, None)
    entry.fields = fields  # type: ignore[attr-defined]
    return entry


def test_json_lines_merge_the_fields() -> None:
    line = JsonFormatter().format(record(request_id="abc", status=200, path="/postbacks/passes"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "request" and entry["level"] == "info" and entry["logger"] == "passpost.access"
    assert (entry["request_id"], entry["status"], entry["path"]) == ("abc", 200, "/postbacks/passes")
    assert entry["time"].endswith("+00:00")


def test_text_lines_append_key_values() -> None:
    line = TextFormatter().format(record(request_id="abc", status=200))
    assert line.endswith("passpost.access request request_id=abc status=200")


def test_a_coordinator_not_yet_available_is_not_an_error_line(capsys) -> None:  # type: ignore[no-untyped-def]
    from passpost.logs import configure

    configure("text", "info")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Group Coordinator Request failed: %s", "[Error 15] CoordinatorNotAvailableError")
    coordinator.error("Heartbeat session expired - marking coordinator dead")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "ERROR" in lines[0] and "Heartbeat session expired" in lines[0]


def test_a_coordinator_marked_dead_is_a_debug_line_not_a_warning(capsys) -> None:  # type: ignore[no-untyped-def]
    """aiokafka's own call, as a consumer group's first start makes it several times."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    from passpost.logs import configure

    def mark_dead() -> None:
        coordinator = SimpleNamespace(coordinator_id=1, group_id="passpost-analytics",
                                      _coordinator_dead_fut=SimpleNamespace(set_result=lambda result: None))
        GroupCoordinator.coordinator_dead(coordinator)

    configure("text", "info")
    mark_dead()
    logging.getLogger("aiokafka.consumer.group_coordinator").warning("Heartbeat failed: rebalancing")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "WARNING" in lines[0] and "rebalancing" in lines[0]

    logging.getLogger("aiokafka").setLevel(logging.DEBUG)  # who asks for aiokafka's debug lines gets it among them
    mark_dead()
    logging.getLogger().handlers[0].flush()
    [line] = capsys.readouterr().err.splitlines()
    assert " DEBUG aiokafka.consumer.group_coordinator Marking the coordinator dead (node 1)" in line
    configure("text", "info")


def test_json_time_is_what_datetime_writes_for_every_millisecond_edge() -> None:
    from datetime import datetime, timezone

    formatter = JsonFormatter()
    rng = random.Random(5)
    instants = [1764616091.0, 1764616091.9995, 1764616091.9999996, 1764616092.0004999, 0.0005, 86399.9999999]
    instants += [rng.uniform(0, 4e9) for _ in range(20_000)]
    for created in instants:
        expected = datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")
        assert formatter._utc_time(created) == expected, created


def stream_handler() -> tuple[BatchingStreamHandler, io.StringIO, logging.Logger]:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger(f"test-batching-{random.random()}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler, stream, logger


def test_info_lines_are_written_within_the_flush_interval_without_more_logging() -> None:
    handler, stream, logger = stream_handler()
    logger.info("first")
    logger.info("second")
    deadline = time.monotonic() + 5 * BatchingStreamHandler.FLUSH_SECONDS + 1
    while "second" not in stream.getvalue():
        assert time.monotonic() < deadline, "the batch was never written"
        time.sleep(0.01)
    assert [line.split()[-1] for line in stream.getvalue().splitlines()] == ["first", "second"]


def test_a_warning_is_written_at_once_with_every_line_before_it() -> None:
    handler, stream, logger = stream_handler()
    handler._flusher = threading.Thread()  # no periodic flush in this test: only the warning writes
    logger.info("queued")
    assert stream.getvalue() == ""
    logger.warning("trouble")
    assert [line.split()[-1] for line in stream.getvalue().splitlines()] == ["queued", "trouble"]


def test_a_full_batch_is_written_without_waiting() -> None:
    handler, stream, logger = stream_handler()
    handler._flusher = threading.Thread()
    line = "x" * 1000
    for _ in range(BatchingStreamHandler.FLUSH_BYTES // 1000 + 1):
        logger.info(line)
    written = stream.getvalue()
    assert len(written) >= BatchingStreamHandler.FLUSH_BYTES and written.endswith("\n")


def test_shutdown_writes_what_is_waiting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = ("import logging\nfrom passpost.logs import configure\nconfigure('json', 'info')\n"
              "for n in range(3): logging.getLogger('passpost.access').info('request', extra={'fields': {'n': n}})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["n"] for line in result.stderr.splitlines()] == [0, 1, 2]


def test_configuring_again_writes_what_the_replaced_handler_held() -> None:
    script = ("import logging, os\nfrom passpost.logs import configure\nconfigure('json', 'info')\n"
              "logging.getLogger('passpost.access').info('request', extra={'fields': {'n': 1}})\n"
              "configure('text', 'info')\nos._exit(0)\n")  # no exit handlers: only the replacement can write it
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["n"] for line in result.stderr.splitlines()] == [1]
