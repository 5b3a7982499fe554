"""Running `passpost` commands as real processes in tests, the way they run in production."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from passpost_dev.ports import free_port
from passpost_dev.processes import stop

__all__ = ["LiveIngress", "free_port", "live_ingress", "wait_until_ready"]


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, what: str,
                     timeout: float = 30) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not become ready:\n{log.read_text()}")
        time.sleep(0.05)


@dataclass
class LiveIngress:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@contextmanager
def live_ingress(env: dict[str, str], log: Path, timeout: float = 30) -> Iterator[LiveIngress]:
    """`passpost serve` on a free port with ``env`` added, ready when this yields; stopped after."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "serve"],
                                   env={**os.environ, **env, "PASSPOST_PORT": str(port)}, stdout=sink, stderr=sink)
    ingress = LiveIngress(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_ready(f"{ingress.url}/readyz", process, log, "passpost serve", timeout)
        yield ingress
    finally:
        stop(process)
