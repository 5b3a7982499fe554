"""Running `passpost` commands as real processes in tests, the way they run in production."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{ingress.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"passpost serve did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield ingress
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
