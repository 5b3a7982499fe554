"""Per-request context: a request id, one log line, and the request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task per request).
The request id is the client's ``X-Request-ID`` when it is a sane token, else a new one;
it is echoed in the response and reaches the endpoint as ``request.state.request_id``
(the dead-letter headers carry it). The log line has the path but never the query
string, which may hold a token.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from passpost import tracing
from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.routes import QUIET_PATHS

log = logging.getLogger("passpost.access")

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")





class RequestLog:
    """The request id, the access line and the request metrics of each request: for the
    Starlette routes by way of ``RequestContext``, for the postback route directly (the
    ingress's ``IngressApp`` answers it without Starlette's layers)."""

    def __init__(self, metrics: IngestMetrics, routes: frozenset[str]) -> None:
        self.metrics = metrics
        self.routes = routes
        # `.labels()` takes a lock and builds a key on every call; this runs per request.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[str, Any] = {}

    def done(self, scope: Scope, request_id: str, started: float, status: int, error_code: str | None,
             fields: dict[str, Any] | None) -> None:
        """Count the answered request and write its access line."""
        elapsed = time.perf_counter() - started
        path: str = scope["path"]
        route = path if path in self.routes else "unmatched"
        self._count(route, scope["method"], status, elapsed)
        if route not in QUIET_PATHS and log.isEnabledFor(logging.INFO):
            line = {"request_id": request_id, "method": scope["method"], "path": path[:200], "status": status,
                    "duration_ms": round(elapsed * 1000, 2)}
            if fields:
                line.update(fields)
            if error_code is not None:
                line["error"] = error_code
            log.info("request", extra={"fields": line})

    def _count(self, route: str, method: str, status: int, elapsed: float) -> None:
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.requests.labels(route, method, str(status))
        counter.inc()
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = self.metrics.request_latency.labels(route)
        exemplar = tracing.exemplar()  # None when tracing is off
        if exemplar is None:
            latency.observe(elapsed)
        else:  # shown on /metrics in the OpenMetrics format only (ingest/metrics.py, exposition)
            latency.observe(elapsed, exemplar)


class RequestContext:
    """``RequestLog`` as an ASGI middleware: the endpoint finds the request id in
    ``request.state.request_id`` and may add access-line fields in ``request.state.log_fields``."""

    def __init__(self, app: ASGIApp, requests: RequestLog) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        error_code: str | None = None
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_code
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif status >= 400 and error_code is None:
                # Refusals are small JSON bodies ({"error": code, ...}): the code is worth a field.
                error_code = _error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.requests.done(scope, request_id, started, status, error_code, state.get("log_fields"))


def _error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return new_request_id()


def new_request_id() -> str:
    """32 hex digits, unique across processes and restarts."""
    return f"{_PROCESS_ID}{next(_SEQUENCE):016x}"


# A new request id is this process's random half and a count: unique across processes and
# restarts like a random one, without a getrandom() system call per request (a request id
# is for finding lines, not a secret). Workers are spawned, so each draws its own.
_PROCESS_ID = os.urandom(8).hex()
_SEQUENCE = itertools.count(int.from_bytes(os.urandom(4), "big"))
