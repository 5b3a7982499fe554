"""`passpost serve --workers N` (ingest/workers.py): N processes on one port, one /metrics,
SIGTERM drains them all, a worker's death stops the pod."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.kafka_helpers import create_topics, read_all, unique_topic
from tests.live import LiveIngress, live_ingress

pytestmark = pytest.mark.kafka

TOKEN = "workers-token"
VENDOR_EXAMPLE = (Path(__file__).parent / "data" / "vendor_example.xml").read_bytes()


def workers_of(parent: int) -> list[int]:
    """The worker processes of ``parent`` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children
            if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def env_for(bootstrap: str, events: str, dead: str, **extra: str) -> dict[str, str]:
    return {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PASSPOST_INGEST_TOKENS": TOKEN,
            "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead, "PASSPOST_WORKERS": "2", **extra}


def post_many(ingress: LiveIngress, count: int) -> list[int]:
    def post(index: int) -> int:
        # A connection each, so that the kernel hands them to either worker.
        body = VENDOR_EXAMPLE.replace(b"5294CE37878AE-112613-113711", f"W-{index}".encode())
        return httpx.post(f"{ingress.url}/postbacks/passes", content=body,
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(post, range(count)))


@pytest.mark.parametrize("server", ["uvicorn", "protocol"])
def test_two_workers_share_the_port_and_one_metrics_adds_them_up(kafka_bootstrap: str, tmp_path: Path,
                                                                 server: str) -> None:
    events, dead = unique_topic("workers-events"), unique_topic("workers-dlq")
    create_topics(kafka_bootstrap, [events, dead])
    with live_ingress(env_for(kafka_bootstrap, events, dead, PASSPOST_SERVER=server), tmp_path / "serve.log") as ingress:
        workers = workers_of(ingress.process.pid)
        assert len(workers) == 2
        before = {pid: cpu_ticks(pid) for pid in workers}
        assert post_many(ingress, 600) == [200] * 600
        worked = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
        assert all(ticks > 0 for ticks in worked.values()), f"each worker served some: {worked}"
        for _ in range(4):  # whichever worker answers the scrape, it counts both
            metrics = httpx.get(f"{ingress.url}/metrics").text
            assert 'passpost_http_requests_total{method="POST",route="/postbacks/passes",status="200"} 600.0' \
                in metrics
            assert 'passpost_events_produced_total{origin="GENERATE_PASS",outcome="SUCCESS"} 600.0' in metrics
        ingress.process.send_signal(signal.SIGTERM)
        assert ingress.process.wait(30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert len(read_all(kafka_bootstrap, events, expected=600)) == 600
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_a_dead_worker_stops_the_others_and_the_parent_fails(kafka_bootstrap: str, tmp_path: Path) -> None:
    events, dead = unique_topic("workers-events"), unique_topic("workers-dlq")
    create_topics(kafka_bootstrap, [events, dead])
    with live_ingress(env_for(kafka_bootstrap, events, dead), tmp_path / "serve.log") as ingress:
        first, second = workers_of(ingress.process.pid)
        os.kill(first, signal.SIGKILL)
        assert ingress.process.wait(30) == 128 + signal.SIGKILL
        deadline = time.monotonic() + 10
        while Path(f"/proc/{second}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{second}").exists()


def test_workers_and_a_spool_are_refused_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PASSPOST_INGEST_OPEN": "true", "PASSPOST_SPOOL_DIR": str(tmp_path / "spool")}
    result = subprocess.run([sys.executable, "-m", "passpost", "serve", "--workers", "2", "--port", "1"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "passpost: error: PASSPOST_WORKERS: more than one worker cannot share PASSPOST_SPOOL_DIR; "
        "run one worker per pod (or more pods) with a spool"]
