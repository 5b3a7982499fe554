"""`passpost dev` on a fresh checkout: a local Kafka, the ingress, and a curl that works."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from passpost_dev.dev import VENDOR_EXAMPLE
from tests.kafka_helpers import read_all
from tests.live import free_port, stop

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))


def test_packaged_example_is_the_vendor_example_as_printed() -> None:
    assert VENDOR_EXAMPLE == (ROOT / "tests" / "data" / "vendor_example.xml").read_text()


def dev_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PASSPOST_")}
    env["PASSPOST_PORT"] = str(free_port())
    return env


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    log: Path
    deadline: float

    @property
    def output(self) -> str:
        return self.log.read_text()

    def post(self, status_code: str = "N801") -> dict[str, Any]:
        """Run the printed curl, with another status code if asked."""
        curl = self.output[self.output.index("curl -sS"): self.output.index("\nXML\n") + len("\nXML")]
        result = subprocess.run(["bash", "-c", curl.replace("<STATUSCODE>N801<", f"<STATUSCODE>{status_code}<")],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def consumer_urls(self) -> dict[str, str]:
        """Each consumer's HTTP port, as the banner prints it."""
        return {name: url.removesuffix("/metrics")
                for name, url in re.findall(r"(\w+) \(metrics on (\S+)\)", self.output)}

    def wait_for(self, pattern: str) -> None:
        while not re.search(pattern, self.output):
            assert time.monotonic() < self.deadline and self.process.poll() is None, self.output
            time.sleep(0.3)

    def wait_for_analytics(self, events: int) -> None:
        """Until the analytics consumer (its metrics address is printed) has written ``events``."""
        metrics = re.search(r"analytics \(metrics on (\S+)\)", self.output).group(1)  # type: ignore[union-attr]
        while f'passpost_consumer_events_total{{consumer="analytics"}} {events}.0' not in _text(metrics):
            assert time.monotonic() < self.deadline and "passpost: error" not in self.output, self.output
            time.sleep(0.3)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:  # not listening yet
        return None


def _text(url: str) -> str:
    try:
        return httpx.get(url).text
    except httpx.HTTPError:  # a consumer still starting (or one that exited: the deadline says so)
        return ""


@contextmanager
def running_dev(cwd: Path, env: dict[str, str], log: Path) -> Iterator[Dev]:
    """`passpost dev` in ``cwd`` (its data/ lands there), up and printing its curl; then Ctrl-C, exit 0."""
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "dev"], env=env, stdout=sink, stderr=sink,
                                   cwd=cwd)
    dev = Dev(process, log, time.monotonic() + 180)
    try:
        while "Ctrl-C stops everything" not in dev.output or "Application startup complete" not in dev.output:
            assert process.poll() is None, dev.output
            assert time.monotonic() < dev.deadline, dev.output
            time.sleep(0.3)
        # Up means the consumers too: each has its partitions (its /readyz answers 200).
        for url in dev.consumer_urls().values():
            while _status(url + "/readyz") != 200:
                assert process.poll() is None and time.monotonic() < dev.deadline, dev.output
                time.sleep(0.3)
        yield dev
    finally:
        stop(process, signal.SIGINT, timeout=60)
    assert process.returncode == 0, dev.output


def report(cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "passpost", "report"], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dev_runs_the_pipeline_and_prints_a_curl_whose_postback_lands_everywhere(tmp_path: Path) -> None:
    env = dev_env()
    with running_dev(tmp_path, env, tmp_path / "dev.log") as dev:
        bootstrap = re.search(r"Kafka is up at (\S+)", dev.output).group(1)  # type: ignore[union-attr]
        answer = dev.post()
        assert answer["events"] == 1

        [record] = read_all(bootstrap, "pass-postbacks.v1", expected=1)
        event = fastavro.schemaless_reader(io.BytesIO(record.value[10:]), SCHEMA)
        assert event["event_id"] == answer["event_ids"][0]
        assert event["serial_number"] == "5294CE37878AE-112613-113711"

        # The developer's next step: an N811 shows up as an alert in the same terminal (the alert's
        # own line: the alerts consumer's start-up line names N811 among its rules).
        assert dev.post("N811")["events"] == 1
        dev.wait_for(r"alert \[FIRING:critical\] .*status_code=N811")
        dev.wait_for_analytics(2)  # ...and the analytics consumer has both postbacks
        # The banner's report command works from a new shell (no venv on PATH) while dev runs.
        command = re.search(r"`([^`]+ report)` \(or `make report`\)|`([^`]+ report)`", dev.output)
        assert command is not None, dev.output
        shell = subprocess.run(["bash", "-c", command.group(1) or command.group(2)], cwd=tmp_path, capture_output=True,
                               text=True, timeout=60, check=False,
                               env={**env, "PATH": "/usr/bin:/bin"})
        assert shell.returncode == 0, shell.stderr
        assert "2 postbacks" in shell.stdout
        # The example is dated 2013: the report says why its last 24 hours are empty.
        assert "the latest postback is from 2013-11-26" in " ".join(shell.stdout.split())
    # Its jars are cached (the session's broker fetched them): Maven Central is not mentioned.
    assert "Maven Central" not in dev.output
    printed = report(tmp_path, env)
    assert "N811" in printed and "N801" in printed


def test_a_second_dev_run_keeps_its_broker_and_stores_consistent(tmp_path: Path) -> None:
    """data/ is kept across runs, so is the broker its offsets refer to: the second run's consumers
    accept their stores and go on from where the first run stopped."""
    env = dev_env()
    with running_dev(tmp_path, env, tmp_path / "first.log") as first:
        first.post("N811")
        first.wait_for_analytics(1)
    with running_dev(tmp_path, env, tmp_path / "second.log") as second:
        second.post("N803")
        second.wait_for_analytics(1)  # the new postback only: the first is not read again
    printed = report(tmp_path, env)
    assert "N811" in printed and "N803" in printed


def test_dev_with_its_port_taken_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = dev_env()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["PASSPOST_PORT"])))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "passpost", "dev"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"passpost: error: PASSPOST_PORT: port {env['PASSPOST_PORT']} on 127.0.0.1 "
                                          "is already in use (choose another with --port or PASSPOST_PORT)"]


def test_maven_central_is_named_only_when_the_jars_are_downloaded(tmp_path: Path) -> None:
    from passpost_dev.dev import starting_message
    from passpost_dev.kafka import KAFKA_VERSION, kafka_jars_cached

    assert not kafka_jars_cached(tmp_path)
    (tmp_path / f"kafka-{KAFKA_VERSION}").mkdir()
    (tmp_path / f"kafka-{KAFKA_VERSION}" / "libs.complete").write_text("kafka_2.13.jar\n")
    assert kafka_jars_cached(tmp_path)
    assert "Maven Central" in starting_message(downloads=True)
    assert "Maven Central" not in starting_message(downloads=False)


def test_without_passpost_dev_the_command_says_in_one_line_how_to_get_it() -> None:
    """The image carries passpost alone: `passpost dev` there is one line and status 2, no traceback."""
    script = ("import sys\nsys.modules['passpost_dev'] = None  # as if passpost-dev were not installed\n"
              "from passpost.cli import main\nmain(['dev'])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("passpost: error: `passpost dev` needs the development package passpost-dev")
    assert "make dev" in line
