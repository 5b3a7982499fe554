"""Running the ingress, with the shutdown Kubernetes expects: on its own server
(``PASSPOST_SERVER=protocol``, the default, ``ingest/protocol.py``) or under uvicorn.

On SIGTERM: ``/readyz`` turns 503 at once, the server stops accepting connections and lets
in-flight requests finish (up to ``shutdown_timeout_seconds``), then the producer is flushed
and closed (by ``serve`` on the own server, by the app's lifespan under uvicorn). The
producer is started before the server listens, so an unreachable Kafka is a one-line error
at start-up rather than a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import signal
import socket
from collections.abc import Callable, Generator

import uvicorn
from starlette.types import ASGIApp

from passpost.errors import PasspostError
from passpost.ingest import workers
from passpost.ingest.app import create_app
from passpost.ingest.connection import ConnectionLimits, LimitedHttpProtocol
from passpost.ingest.forwarder import publisher_for
from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.publisher import Publisher
from passpost.settings import Settings


class IngressServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: list[Callable[[], None]] | None = None) -> None:
        super().__init__(config)
        self._on_exit = on_exit or []

    def handle_exit(self, sig: int, frame: object) -> None:
        for callback in self._on_exit:
            callback()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after shutting down, which would kill the process
        # before the caller's own clean-up (the dev command's local Kafka) has run.
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_config(app: ASGIApp, settings: Settings, metrics: IngestMetrics | None = None) -> uvicorn.Config:
    """How the ingress runs under uvicorn (the benchmark's bare endpoint runs the same way)."""
    protocol = functools.partial(LimitedHttpProtocol, limits=ConnectionLimits.from_settings(settings),
                                 metrics=metrics or IngestMetrics())
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,  # type: ignore[arg-type]  # uvicorn calls it with the protocol's arguments
        ws="none",
        lifespan="on",
        access_log=False,  # ours has a request id and never the query string
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )


def _tune_garbage_collector() -> None:
    """A request allocates a few hundred objects, almost none of them in cycles, so the
    default threshold (a young-generation pass every 700 allocations) spends CPU finding
    nothing. So: a pass every 20,000 allocations, and the objects that live as long as the
    process (modules, app, producer) frozen out of every pass; cyclic garbage still goes
    (the measurement: BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class PortUnavailable(PasspostError):
    """The ingress cannot listen where it is told to. ``str()`` is one line naming the setting."""


def listening_socket(host: str, port: int) -> socket.socket:
    """The ingress's socket, bound before anything else starts so that a taken port is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn binds: a port in TIME_WAIT after a previous run is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortUnavailable(f"PASSPOST_PORT: port {port} on {host} is already in use "
                                  "(choose another with --port or PASSPOST_PORT)") from None
        raise PortUnavailable(f"PASSPOST_HOST/PASSPOST_PORT: cannot listen on {host}:{port}: "
                              f"{error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    """One ingress process, on ``sock`` when given (a worker's share of the parent's socket)."""
    sock = sock or listening_socket(settings.host, settings.port)
    metrics = IngestMetrics(known_origins=settings.known_origins)
    # With PASSPOST_SPOOL_DIR, the spool is opened here (a bad directory is one line) and an
    # unreachable Kafka no longer stops the start: postbacks are spooled until it is back.
    publisher = publisher_for(settings, Publisher(settings, metrics), metrics.registry)
    await publisher.start()
    app = create_app(settings, publisher, metrics)
    ingress = app.state.ingress

    def start_draining() -> None:
        ingress.draining = True

    if settings.server == "protocol":
        from passpost.ingest.protocol import ProtocolServer

        own = ProtocolServer(app, ingress, ConnectionLimits.from_settings(settings), metrics,
                             asyncio.get_running_loop())
        _tune_garbage_collector()
        try:
            await own.serve(sock, settings.shutdown_timeout_seconds, on_exit=[start_draining])
        finally:
            ingress.draining = True
            await ingress.publisher.stop()
        return
    config = uvicorn_config(app, settings, metrics)
    _tune_garbage_collector()
    await IngressServer(config, on_exit=[start_draining]).serve(sockets=[sock])


def run(settings: Settings, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM; the exit status (with ``settings.workers`` > 1, the workers')."""
    if sock is None and settings.workers > 1:
        workers.check(settings)
        return workers.run_workers(settings, listening_socket(settings.host, settings.port))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        asyncio.run(serve(settings, sock))
    else:
        uvloop.run(serve(settings, sock))
    return 0
