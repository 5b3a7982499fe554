"""`passpost dev` on a fresh checkout: a local Kafka, the ingress, and a curl that works."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import httpx
import pytest

from passpost.dev import VENDOR_EXAMPLE
from tests.kafka_helpers import read_all
from tests.live import free_port

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))


def test_packaged_example_is_the_vendor_example_as_printed() -> None:
    assert VENDOR_EXAMPLE == (ROOT / "tests" / "data" / "vendor_example.xml").read_text()


def test_dev_runs_the_pipeline_and_prints_a_curl_whose_postback_lands_everywhere(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PASSPOST_")}
    env["PASSPOST_PORT"] = str(free_port())
    log = tmp_path / "dev.log"
    with log.open("wb") as sink:  # in tmp_path: the DuckDB file and the alert state land there
        process = subprocess.Popen([sys.executable, "-m", "passpost", "dev"], env=env, stdout=sink, stderr=sink,
                                   cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in log.read_text() or "Application startup complete" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        output = log.read_text()
        bootstrap = re.search(r"Kafka is up at (\S+)", output).group(1)  # type: ignore[union-attr]
        curl = output[output.index("curl -sS"): output.index("\nXML\n") + len("\nXML")]

        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["events"] == 1

        [record] = read_all(bootstrap, "pass-postbacks.v1", expected=1)
        event = fastavro.schemaless_reader(io.BytesIO(record.value[10:]), SCHEMA)
        assert event["event_id"] == answer["event_ids"][0]
        assert event["serial_number"] == "5294CE37878AE-112613-113711"

        # The developer's next step: an N811 shows up as an alert in the same terminal.
        failing = subprocess.run(["bash", "-c", curl.replace("<STATUSCODE>N801<", "<STATUSCODE>N811<")],
                                 capture_output=True, text=True, timeout=30)
        assert json.loads(failing.stdout)["events"] == 1
        while "N811" not in log.read_text():
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.3)
        # ...and the analytics consumer has both postbacks (its metrics address is printed).
        metrics = re.search(r"analytics \(metrics on (\S+)\)", output).group(1)  # type: ignore[union-attr]
        while 'passpost_consumer_events_total{consumer="analytics"} 2.0' not in httpx.get(metrics).text:
            assert time.monotonic() < deadline + 60, log.read_text()
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, log.read_text()
    report = subprocess.run([sys.executable, "-m", "passpost", "report"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "N811" in report.stdout and "N801" in report.stdout
