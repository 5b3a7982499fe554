"""The ingress's own HTTP/1.1 server: an ``asyncio.Protocol`` over httptools (issue 22).

``PASSPOST_SERVER=protocol`` serves the ingress with this instead of uvicorn. Under
uvicorn a bare Starlette endpoint costs several times what httptools and the socket
writes do; most of it is the ASGI machinery around each request (BENCHMARKS.md, issue
22). Here ``POST /postbacks/passes`` goes from the parser straight to
``Ingress.receive_postback`` with a minimal scope and ``receive``, and its answer is one
``write``; every other path (``/healthz``, ``/readyz``, ``/metrics``, 404, 405) still goes
through the Starlette app, by a small ASGI adapter.

The connection limits are those of ``ingest/connection.py`` (docs/contract.md, "The HTTP
answers"), with the same refusals, counts and access lines: request line, header bytes
and count (414, 431, no more than the limit buffered), header and body timeouts (408,
one sweep per server), the connection cap (503 before anything is read), 400 for what
the parser refuses. As under uvicorn, a request answered before its body was read whole
closes the connection, pipelined requests are answered in order (reading pauses while
one is in flight), HTTP/1.0 and ``Connection: close`` close after the answer,
``Expect: 100-continue`` is answered when the endpoint first asks for the body, and HEAD
gets the head alone.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.types import Message

from passpost import tracing
from passpost.ingest.app import INTERNAL_ERROR, Answer, Ingress, IngressApp
from passpost.ingest.connection import TIMED_OUT, ConnectionLimits, Refused, refusals_for
from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.middleware import RequestLog, new_request_id, request_id_of
from passpost.ingest.refusal import Refusal
from passpost.ingest.routes import ALL_PATHS, POSTBACK_PATH
from passpost.ingest.tracing import serve_traced

access_log = logging.getLogger("passpost.access")
log = logging.getLogger("passpost.ingest")

SWEEP_SECONDS = 0.25  # how late a timeout may act (as ingest/connection.py)
BODY_HIGH_WATER = 64 * 1024  # unread body bytes at which reading pauses (as uvicorn)

_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
                 for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_POSTBACK = POSTBACK_PATH.encode()


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class _Date:
    """The ``date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
        return self._header


class Request:
    """One request on a connection: its head, its body as it arrives, and whether it was answered."""

    __slots__ = ("body", "body_size", "complete", "connection", "continue_sent", "expect_continue", "headers",
                 "keep_alive", "method", "path", "query", "raw_path", "answered", "scope", "waiter")

    def __init__(self, connection: Connection, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, expect_continue: bool) -> None:
        self.connection = connection
        self.method = method
        raw_path, _, query = url.partition(b"?")
        self.raw_path = raw_path
        self.query = query
        self.path = raw_path.decode("latin-1")
        if "%" in self.path:
            self.path = unquote(self.path)
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.continue_sent = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.answered = False
        self.waiter: asyncio.Future[None] | None = None
        self.scope: dict[str, Any] | None = None

    def make_scope(self) -> dict[str, Any]:
        connection = self.connection
        scope = self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": connection.http_version,
            "server": connection.server.sockname,
            "client": connection.peer,
            "scheme": "http",
            "method": self.method.decode("ascii"),
            "root_path": "",
            "path": self.path,
            "raw_path": self.raw_path,
            "query_string": self.query,
            "headers": self.headers,
            "state": {},
        }
        return scope

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        """The ASGI ``receive`` of this request."""
        connection = self.connection
        while not self.body and not self.complete and not connection.closed:
            if self.expect_continue and not self.continue_sent:
                self.continue_sent = True
                connection.transport.write(_CONTINUE)
            connection.resume()
            self.waiter = connection.loop.create_future()
            await self.waiter
            self.waiter = None
        if self.body:
            chunks, self.body = self.body, []
            self.body_size = 0
            connection.resume()
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return {"type": "http.request", "body": body, "more_body": not self.complete}
        if self.complete:
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.answered:
            # Nothing more will come; later calls wait as ASGI asks, until the answer is sent.
            pass
        return {"type": "http.disconnect"}


class Connection(asyncio.Protocol):
    """One client connection. ``ProtocolServer`` makes one per accepted socket."""

    def __init__(self, server: ProtocolServer) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.refusals = server.refusals
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: tuple[str, int] | None = None
        self.http_version = "1.1"
        self.closed = False
        self.refused = False
        self.paused = False
        # The request being parsed, and those parsed, in order, not yet answered.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.url_done = False
        self.in_head = True
        self.head_bytes = 0
        self.head_budget = self.limits.request_line_bytes + self.limits.header_bytes
        self.current: Request | None = None
        self.pending: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.deadline: float | None = None
        self.deadline_reason = ""

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        too_many = len(server.connections) >= self.limits.max_connections
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        if too_many:
            self.refuse(self.refusals["too_many_connections"])
            return
        self.arm(self.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline = None
        self.server.connections.discard(self)
        for request in (self.current, *self.pending):
            if request is not None:
                request.wake()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.in_head:
            room = self.head_budget - self.head_bytes
            if len(data) > room:
                head, rest = data[:room], data[room:]
                self.feed(head)
                if self.refused:
                    return
                if self.in_head:
                    self.refuse(self.refusals["headers_too_large" if self.url_done else "uri_too_long"])
                    return
                self.feed(rest)
                return
            self.head_bytes += len(data)
        self.feed(data)

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is served as plain HTTP/1.1
        except httptools.HttpParserError as error:
            refused = error.__context__
            self.refuse(refused.refusal if isinstance(refused, Refused) else self.refusals["bad_request"])

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.url_done = False
        if self.deadline is None or self.deadline_reason == "idle":
            if self.deadline is None:
                self.arm(self.limits.header_timeout, "header_timeout")
            else:
                self.deadline_reason = "header_timeout"

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.request_line_bytes:
            raise Refused(self.refusals["uri_too_long"])

    def on_header(self, name: bytes, value: bytes) -> None:
        self.url_done = True
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_bytes > self.limits.header_bytes:
            raise Refused(self.refusals["headers_too_large"])
        if len(self.headers) >= self.limits.header_count:
            raise Refused(self.refusals["too_many_headers"])
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.url_done = True
        parser = self.parser
        self.http_version = parser.get_http_version()
        expect_continue = False
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        request = Request(self, parser.get_method(), self.url, self.headers,
                          parser.should_keep_alive(), expect_continue)
        self.arm(self.limits.body_timeout, "body_timeout")
        if self.current is None:
            self.current = request
            self.task = self.loop.create_task(self.server.handle(request))
        else:
            self.pending.append(request)
            self.pause()  # one request at a time: the next ones wait in the socket

    def on_body(self, body: bytes) -> None:
        request = self.pending[-1] if self.pending else self.current
        if request is None or request.answered:
            return
        request.body.append(body)
        request.body_size += len(body)
        if request.body_size > BODY_HIGH_WATER:
            self.pause()
        request.wake()

    def on_message_complete(self) -> None:
        request = self.pending[-1] if self.pending else self.current
        self.deadline = None
        self.in_head = True
        self.head_bytes = 0
        if request is not None:
            request.complete = True
            request.wake()

    # -- answering -------------------------------------------------------------------------

    def answered(self, request: Request) -> None:
        """``request``'s answer is written: close, or go on with the next one."""
        request.answered = True
        if self.closed or self.transport.is_closing():
            return
        if not request.complete:
            # Answered before its body was read whole (a 401, a 413): the rest would have to be
            # read and thrown away at the client's pace, so the connection closes instead.
            self.deadline = None
            self.transport.close()
            return
        if not request.keep_alive or self.server.shutting_down:
            self.transport.close()
            return
        self.current = None
        if self.pending:
            self.current = self.pending.popleft()
            self.task = self.loop.create_task(self.server.handle(self.current))
            if not self.pending:
                self.resume()
        else:
            self.task = None
            self.resume()
            if self.deadline is None:
                # Keep-alive: the next head must come within the header timeout; an idle
                # connection is closed without an answer.
                self.arm(self.limits.header_timeout, "idle")

    # -- refusing --------------------------------------------------------------------------

    def arm(self, seconds: float, reason: str) -> None:
        self.deadline = self.loop.time() + seconds
        self.deadline_reason = reason
        self.server.sweep_soon()

    def timed_out(self) -> None:
        reason = self.deadline_reason
        self.deadline = None
        if self.closed or self.transport.is_closing():
            return
        if reason == "idle":
            self.transport.close()
            return
        refusal = self.refusals[reason]
        request = self.current if reason == "body_timeout" else None
        if request is not None and not request.answered:
            # The endpoint has the request and waits for its body: it sees a disconnect, answers
            # with this refusal (which it logs) into the void, and the client gets it from here.
            if request.scope is not None:
                request.scope[TIMED_OUT] = refusal
            self.refuse(refusal, logged=False)
            request.wake()
            return
        self.refuse(refusal)

    def refuse(self, refusal: Refusal, *, logged: bool = True) -> None:
        self.refused = True
        self.deadline = None
        self.server.metrics.refusals.labels(refusal.code).inc()
        if logged and access_log.isEnabledFor(logging.INFO):
            fields = {"request_id": new_request_id(), "status": refusal.status, "error": refusal.code}
            access_log.info("request refused", extra={"fields": fields})
        if self.closed or self.transport.is_closing():
            return
        body = refusal.body()
        headers = b"".join(b"%s: %s\r\n" % header for header in refusal.raw_headers(body))
        self.transport.write(b"".join([_status_line(refusal.status), headers, b"connection: close\r\n\r\n", body]))
        self.transport.close()
        self.closed = True


class ProtocolServer:
    """The connections, their limits and the sweep that times them out, and the two ways in:
    the postback route directly, every other one through the Starlette app."""

    def __init__(self, app: IngressApp, ingress: Ingress, limits: ConnectionLimits, metrics: IngestMetrics,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.ingress = ingress
        self.limits = limits
        self.metrics = metrics
        self.loop = loop
        self.refusals = refusals_for(limits)
        self.requests = RequestLog(metrics, ALL_PATHS)
        self.connections: set[Connection] = set()
        self.sockname: tuple[str, int] | None = None
        self.shutting_down = False
        self._sweeping = False
        self._date = _Date()

    # -- timeouts --------------------------------------------------------------------------

    def sweep_soon(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            deadline = connection.deadline
            if deadline is not None and deadline <= now:
                connection.timed_out()
        self.loop.call_later(SWEEP_SECONDS, self._sweep)

    # -- requests --------------------------------------------------------------------------

    async def handle(self, request: Request) -> None:
        connection = request.connection
        try:
            if request.method == b"POST" and request.raw_path == _POSTBACK:
                await self._postback(request)
            else:
                await self._asgi(request)
        finally:
            if not connection.closed:
                connection.answered(request)
            else:
                request.answered = True

    async def _postback(self, request: Request) -> None:
        scope = request.make_scope()
        scope["app"] = self.app
        tracer = tracing.tracer
        if tracer is None:
            await self._answer_postback(request, scope)
        else:  # the same SERVER span as through uvicorn (PostbackEndpoint)
            await serve_traced(tracer, scope, lambda: self._answer_postback(request, scope))

    async def _answer_postback(self, request: Request, scope: dict[str, Any]) -> tuple[int, str | None]:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        answer = await self.ingress.answer_postback(scope, request.receive, request_id)
        try:
            self._write(request, answer.status, answer.headers, answer.body, request_id.encode())
        finally:
            self.requests.done(scope, request_id, started, answer.status, answer.error_code, answer.log_fields)
        return answer.status, answer.error_code

    def _write(self, request: Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
               request_id: bytes | None = None) -> None:
        connection = request.connection
        if connection.closed or connection.transport.is_closing():
            return
        parts = [_status_line(status), self._date.header()]
        parts += [b"%s: %s\r\n" % (name, value) for name, value in headers]
        if request_id is not None:
            parts.append(b"x-request-id: %s\r\n" % request_id)
        if not request.keep_alive or not request.complete or self.shutting_down:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if request.method != b"HEAD":
            parts.append(body)
        connection.transport.write(b"".join(parts))

    async def _asgi(self, request: Request) -> None:
        """Every other route, through the Starlette app (its middleware logs and counts it)."""
        scope = request.make_scope()
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = b"".join(chunks)
                    headers = [(bytes(name).lower(), bytes(value)) for name, value in started.get("headers", ())]
                    if not any(name == b"content-length" for name, _ in headers):
                        headers.append((b"content-length", b"%d" % len(body)))
                    self._write(request, started["status"], headers, body)

        try:
            await self.app(scope, request.receive, send)
        except Exception:
            log.exception("a route failed")
            if not started:
                answer = Answer.refusal(INTERNAL_ERROR)
                self._write(request, answer.status, answer.headers, answer.body)

    # -- running ---------------------------------------------------------------------------

    async def serve(self, sock: socket.socket, shutdown_timeout: float,
                    on_exit: list[Callable[[], None]]) -> None:
        """Serve on ``sock`` until SIGTERM or SIGINT; then stop accepting, let in-flight
        requests finish (up to ``shutdown_timeout``), and return."""
        stop = asyncio.Event()

        def exit_soon() -> None:
            for callback in on_exit:
                callback()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, exit_soon)
        sock.listen(2048)
        server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
        name = sock.getsockname()
        self.sockname = (str(name[0]), int(name[1]))
        # The line uvicorn writes once it listens: scripts and `passpost dev`'s users wait for it.
        log.info("Application startup complete: listening on http://%s:%d", *self.sockname)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.remove_signal_handler(signum)
            server.close()
            self.shutting_down = True
            for connection in list(self.connections):
                if connection.current is None and not connection.closed:
                    connection.transport.close()  # idle keep-alive connections
            deadline = self.loop.time() + shutdown_timeout
            while any(connection.current is not None and not connection.closed for connection in self.connections):
                if self.loop.time() > deadline:
                    log.warning("requests still in flight after %g s are cut off", shutdown_timeout)
                    break
                await asyncio.sleep(0.05)
            for connection in list(self.connections):
                if not connection.closed:
                    connection.transport.close()
                if connection.task is not None and not connection.task.done():
                    connection.task.cancel()
