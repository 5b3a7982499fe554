"""``passpost serve --workers N``: N ingress processes on one listening socket.

The ingress is CPU-bound and a Python process runs one request at a time, so a pod with
two cores serves more with two processes. The parent binds the port (a taken port is
still one line), then starts the workers with the ``spawn`` method: each imports
prometheus_client afresh with ``PROMETHEUS_MULTIPROC_DIR`` set, so every worker's
counters and histograms go to files in one directory that ``/metrics`` of any worker
adds up. Each worker has its own Kafka producer and accepts from the shared socket.

SIGTERM (or SIGINT) is passed on to every worker, which drains like a single ingress;
the parent exits 0 once all did. A worker that dies otherwise stops the others and the
parent exits with its status, so that the orchestrator restarts the pod whole rather
than running on with fewer workers than it was given.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

from passpost.errors import ConfigurationError, PasspostError
from passpost.settings import Settings

# Where prometheus_client's multiprocess mode keeps the workers' metric files.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def check(settings: Settings) -> None:
    if settings.workers > 1 and settings.spool_dir is not None:
        # The spool is one append-only log with one writer (it locks its directory).
        raise ConfigurationError("PASSPOST_WORKERS: more than one worker cannot share PASSPOST_SPOOL_DIR; "
                                 "run one worker per pod (or more pods) with a spool")


def run_workers(settings: Settings, sock: socket.socket) -> int:
    """Run ``settings.workers`` ingress processes on ``sock`` until they end; their exit status."""
    metrics_dir = tempfile.mkdtemp(prefix="passpost-metrics-")
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir  # inherited by the spawned workers
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(settings, sock), name=f"passpost-worker-{index}")
               for index in range(settings.workers)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        sock.close()  # the workers hold it now
        status = _supervise(workers, lambda: stopping, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _supervise(workers: Sequence[BaseProcess], stopping: Callable[[], bool],
               stop: Callable[[int, FrameType | None], None]) -> int:
    """Wait for every worker; the first failure of one stops the others."""
    status = 0
    while any(worker.is_alive() for worker in workers):
        time.sleep(0.2)
        for worker in workers:
            code = worker.exitcode
            if code is not None and code != 0 and status == 0:
                status = code if code > 0 else 128 - code  # -N: killed by signal N
                if not stopping():
                    stop(signal.SIGTERM, None)
    return status


def _worker(settings: Settings, sock: socket.socket) -> None:
    from passpost.ingest.server import run
    from passpost.logs import configure

    configure(settings.log_format, settings.log_level)
    try:
        run(settings, sock)
    except PasspostError as error:  # e.g. Kafka unreachable at start: one line, like one process
        print(f"passpost: error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
