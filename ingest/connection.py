"""One HTTP/1.1 connection under limits, enforced before the app and before credentials.

The ingress faces the internet, so what a client can make the server hold is bounded
here, in uvicorn's httptools protocol, where the bytes arrive (docs/contract.md, "The HTTP answers"):

* a request line over ``request_line_bytes`` is answered 414, request headers over
  ``header_bytes`` or ``header_count`` 431; no more than the limit (plus the rest of
  one read) is buffered, so a 64 MiB header costs what a 24 KiB one does;
* the head (request line and headers) must arrive within ``header_timeout`` of the
  connection opening or of the previous response, and the body within
  ``body_timeout`` of the head: 408 where an answer can still be sent, then the
  connection is closed;
* at most ``max_connections`` connections are open; one more is answered 503 at once
  and closed, before anything of it is read;
* a request the parser refuses (not HTTP, a lying chunk size) is answered 400.

Every such answer is a JSON error body like the app's, carries ``Connection: close``,
is counted in ``passpost_http_refusals_total{reason}`` and logged as one access line.
Nothing of these requests reaches the app, so nothing is written to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from passpost.ingest.metrics import IngestMetrics
from passpost.ingest.middleware import new_request_id
from passpost.ingest.refusal import Refusal
from passpost.settings import Settings

access_log = logging.getLogger("passpost.access")

# Scope key under which a request whose body timed out carries its ``Refusal`` to the app.
TIMED_OUT = "passpost.timed_out"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    request_line_bytes: int
    header_bytes: int
    header_count: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            request_line_bytes=settings.max_request_line_bytes,
            header_bytes=settings.max_header_bytes,
            header_count=settings.max_header_count,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=settings.max_connections,
        )


class Refused(Exception):
    """Raised from a parser callback to stop parsing; httptools hands it back as the context (both servers)."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def refusals_for(limits: ConnectionLimits) -> dict[str, Refusal]:
    return {
        "uri_too_long": Refusal(414, "uri_too_long",
                                f"The request line exceeds {limits.request_line_bytes} bytes."),
        "headers_too_large": Refusal(431, "headers_too_large",
                                     f"The request headers exceed {limits.header_bytes} bytes."),
        "too_many_headers": Refusal(431, "too_many_headers",
                                    f"The request has more than {limits.header_count} headers."),
        "header_timeout": Refusal(408, "header_timeout",
                                  f"The request headers did not arrive within {limits.header_timeout:g} s."),
        "body_timeout": Refusal(408, "body_timeout",
                                f"The request body did not arrive within {limits.body_timeout:g} s."),
        "too_many_connections": Refusal(503, "too_many_connections",
                                        f"The server holds {limits.max_connections} connections; retry later."),
        "bad_request": Refusal(400, "bad_request", "The request is not valid HTTP/1.1."),
    }


SWEEP_SECONDS = 0.25  # how late a timeout may act
_SWEEPING = "passpost_sweeping"


def _sweep(loop: asyncio.AbstractEventLoop, server_state: ServerState) -> None:
    """Refuse every connection past its deadline, then look again in ``SWEEP_SECONDS``."""
    now = loop.time()
    for connection in list(server_state.connections):
        deadline = getattr(connection, "_deadline", None)
        if deadline is not None and deadline <= now and isinstance(connection, LimitedHttpProtocol):
            connection._timed_out()
    loop.call_later(SWEEP_SECONDS, _sweep, loop, server_state)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. uvicorn builds one per connection."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        metrics: IngestMetrics,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.metrics = metrics
        self.refusals = refusals_for(limits)
        # Bytes of the head (request line + headers) that may arrive before it must be complete.
        self._head_budget = limits.request_line_bytes + limits.header_bytes
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._url_done = False
        # When the head or body must be in (loop time), and which refusal follows; checked by
        # one sweep per server, not a timer per request (arming and cancelling a timer twice
        # per request cost more than the rest of these limits together).
        self._deadline: float | None = None
        self._deadline_reason = ""
        self._unread_body: Any = None  # the cycle whose body is still arriving
        self._refused = False

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        too_many = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if too_many:
            self._refuse(self.refusals["too_many_connections"])
            return
        self._arm(self.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            room = self._head_budget - self._head_bytes
            if len(data) > room:
                # Feed only what the head may still take: if it is not complete by then, the
                # rest of this read is never parsed, so a huge header is never buffered.
                head, rest = data[:room], data[room:]
                self._feed(head)
                if self._refused:
                    return
                if self._in_head:
                    self._refuse(self.refusals["headers_too_large" if self._url_done else "uri_too_long"])
                    return
                self._feed(rest)
                return
            self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is served as plain HTTP/1.1
        except httptools.HttpParserError as error:
            refused = error.__context__
            self._refuse(refused.refusal if isinstance(refused, Refused) else self.refusals["bad_request"])

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._url_done = False
        if self._deadline is None:
            self._arm(self.limits.header_timeout, "header_timeout")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.request_line_bytes:
            raise Refused(self.refusals["uri_too_long"])

    def on_header(self, name: bytes, value: bytes) -> None:
        self._url_done = True
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > self.limits.header_bytes:
            raise Refused(self.refusals["headers_too_large"])
        if len(self.headers) >= self.limits.header_count:
            raise Refused(self.refusals["too_many_headers"])
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._url_done = True
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_headers_complete()
        self._unread_body = self.cycle

    def on_message_complete(self) -> None:
        self._disarm()
        self._unread_body = None
        # Whatever arrives next is the head of the next request.
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        unread = self._unread_body
        if unread is not None and unread.response_complete:
            # Answered before its body was read whole (a 401, a 413): the rest would have to be
            # read and thrown away at the client's pace, so the connection closes instead.
            self._disarm()
            if not self.transport.is_closing():
                self.transport.close()

    # -- refusing --------------------------------------------------------------------------

    def _arm(self, seconds: float, reason: str) -> None:
        self._deadline = self.loop.time() + seconds
        self._deadline_reason = reason
        if not getattr(self.server_state, _SWEEPING, False):
            setattr(self.server_state, _SWEEPING, True)
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, self.server_state)

    def _disarm(self) -> None:
        self._deadline = None

    def _timed_out(self) -> None:
        reason = self._deadline_reason
        self._deadline = None
        if self.transport.is_closing():
            return
        refusal = self.refusals[reason]
        cycle = self._unread_body if reason == "body_timeout" else None
        if cycle is not None and not cycle.response_complete:
            # The app has the request and waits for its body: it sees a disconnect, answers
            # with this refusal (which it logs) into the void, and the client gets it from here.
            cycle.scope[TIMED_OUT] = refusal
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self._refused = True
                self.metrics.refusals.labels(refusal.code).inc()
                self.transport.close()
                return
        self._refuse(refusal, logged=cycle is None)

    def _refuse(self, refusal: Refusal, *, logged: bool = True) -> None:
        self._refused = True
        self._disarm()
        self.metrics.refusals.labels(refusal.code).inc()
        if logged and access_log.isEnabledFor(logging.INFO):
            fields = {"request_id": new_request_id(), "status": refusal.status, "error": refusal.code}
            access_log.info("request refused", extra={"fields": fields})
        if self.transport.is_closing():
            return
        body = refusal.body()
        headers = b"".join(b"%s: %s\r\n" % header for header in refusal.raw_headers(body))
        self.transport.write(b"".join([STATUS_LINE[refusal.status], headers, b"connection: close\r\n\r\n", body]))
        self.transport.close()
