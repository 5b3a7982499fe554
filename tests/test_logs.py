"""Log formats (passpost/logs.py): one JSON object per line when asked."""

from __future__ import annotations

import json
import logging

from passpost.logs import JsonFormatter, TextFormatter


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
