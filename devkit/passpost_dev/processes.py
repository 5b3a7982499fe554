"""Stopping child processes: ask with a signal, wait, and kill only those that do not go.

The one way the development tools, the tests and the benchmarks end a process they started.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float | None = 30) -> int:
    """Send ``signum`` to ``process`` unless it has ended; kill it if it has not within ``timeout`` seconds.

    Returns its exit status (negative: the signal that ended it).
    """
    stop_all([process], signum, timeout)
    return process.returncode


def stop_all(processes: Iterable[subprocess.Popen[bytes]], signum: int = signal.SIGTERM,
             timeout: float | None = 30) -> None:
    """``stop`` for several processes at once: each is sent ``signum`` first, then all share the ``timeout``."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signum)
    deadline = None if timeout is None else time.monotonic() + timeout
    for process in running:
        try:
            process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
