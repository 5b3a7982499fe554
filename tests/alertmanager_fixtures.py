"""A real Prometheus Alertmanager for the alerts tests (Debian's `prometheus-alertmanager`).

alertmanager_url  one Alertmanager for the session, on a free loopback port, with a
                  temporary config (a null receiver: tests read alerts back from its API)
                  and storage, clustering off. Tests share it, so each should use labels
                  of its own (a unique origin) and filter on them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import free_port, stop, wait_until_ready

BINARY = "prometheus-alertmanager"  # Debian's name for the upstream `alertmanager` binary

CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: "null"
"""


@pytest.fixture(scope="session")
def alertmanager_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which(BINARY) or shutil.which("alertmanager")
    if binary is None:
        pytest.fail(f"{BINARY} is not installed (apt-get install prometheus-alertmanager)")
    home: Path = tmp_path_factory.mktemp("alertmanager")
    (home / "alertmanager.yml").write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "alertmanager.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [binary, f"--config.file={home / 'alertmanager.yml'}", f"--storage.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=sink, stderr=sink)
    try:
        wait_until_ready(f"{url}/-/ready", process, log, "Alertmanager")
        yield url
    finally:
        stop(process, timeout=10)


def active_alerts(url: str, **labels: str) -> list[dict]:
    """Alertmanager's active alerts whose labels include ``labels`` (resolved ones are not listed)."""
    filters = [f'{name}="{value}"' for name, value in labels.items()]
    response = httpx.get(f"{url}/api/v2/alerts", params={"filter": filters}, timeout=5)
    response.raise_for_status()
    return response.json()
