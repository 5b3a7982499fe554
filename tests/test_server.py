"""`passpost serve` as a process (ingest/server.py): SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from passpost import settings as settings_module
from passpost.ingest.app import create_app
from tests.kafka_helpers import create_topics, read_all, unique_topic
from tests.live import live_ingress

pytestmark = pytest.mark.kafka

TOKEN = "server-token"


def test_readiness_turns_503_once_draining(kafka_bootstrap: str) -> None:
    settings = settings_module.defaults().replace(kafka_bootstrap_servers=kafka_bootstrap, ingest_tokens=(TOKEN,))
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        app.state.ingress.draining = True
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["error"] == "shutting_down"
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("server", ["uvicorn", "protocol"])
def test_sigterm_finishes_the_request_in_flight_then_exits_0(kafka_bootstrap: str, tmp_path: Path, server: str) -> None:
    events, dead = unique_topic("events"), unique_topic("dlq")
    create_topics(kafka_bootstrap, [events, dead])
    env = {"PASSPOST_SERVER": server, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead}
    with live_ingress(env, tmp_path / "serve.log") as ingress:
        process, url = ingress.process, ingress.url
        started = threading.Event()

        def slow_body() -> Iterator[bytes]:
            # The request is in flight when SIGTERM arrives: its body is still arriving.
            yield b"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>"
            started.set()
            time.sleep(1.5)
            yield b"<STATUSCODE>N811</STATUSCODE><SERIALNUMBER>in-flight</SERIALNUMBER></POSTBACK>"

        answer: dict[str, httpx.Response] = {}
        poster = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{url}/postbacks/passes", content=slow_body(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)))
        poster.start()
        assert started.wait(10)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        poster.join(20)
        assert answer["r"].status_code == 200, answer["r"].text
        assert process.wait(30) == 0, ingress.log.read_text()
    [record] = read_all(kafka_bootstrap, events, expected=1)
    assert record.key == b"in-flight"
    assert "Traceback" not in ingress.log.read_text()


def test_a_taken_port_is_one_line_naming_the_setting_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Checked before Kafka is even tried: this bootstrap would fail otherwise.
        env = {"PASSPOST_PORT": str(port), "PASSPOST_INGEST_OPEN": "true", "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
        result = subprocess.run([sys.executable, "-m", "passpost", "serve"], capture_output=True, text=True, timeout=30,
                                env={**os.environ, **env})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"passpost: error: PASSPOST_PORT: port {port} on 127.0.0.1 is already in use "
        "(choose another with --port or PASSPOST_PORT)"]
