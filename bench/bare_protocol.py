"""The floor of an own server: an ``asyncio.Protocol`` over httptools that answers every
request 200 with an empty body, no ASGI layer, on uvloop (issue 22).

It is what the project's own protocol would cost before any of the ingress's work or the
connection limits; ``bench/servers.py`` sets it against the bare Starlette endpoint under
uvicorn and under granian.

    python bench/bare_protocol.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import httptools
import uvloop

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class BareProtocol(asyncio.Protocol):
    __slots__ = ("parser", "transport")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are no asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(_OK)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(BareProtocol, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    options = parser.parse_args()
    uvloop.run(serve(options.host, options.port))


if __name__ == "__main__":
    main()
