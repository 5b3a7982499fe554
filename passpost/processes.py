"""Stopping a child process: ask with a signal, wait, and kill it only if it does not go."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float | None = 30) -> None:
    """Send ``signum`` to ``process`` unless it has ended; kill it if it has not within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
