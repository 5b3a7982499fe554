"""A refusal: what the ingress tells a client it will not accept, and how it is written.

Every refusal, wherever it is decided (the connection's limits, the body's parsing, the
app's checks), is one ``Refusal``: an HTTP status, a machine code, a sentence for the
client and any headers it needs (``Retry-After``, ``WWW-Authenticate``). Its body is always
the same JSON, ``{"error": code, "detail": sentence}``, rendered here and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        # Compact, as Starlette's JSONResponse writes it, so every error body reads the same.
        return json.dumps({"error": self.code, "detail": self.detail}, ensure_ascii=False,
                          separators=(",", ":")).encode()

    def raw_headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        """ASGI headers for ``body`` (``self.body()``): its type and length, then the refusal's own."""
        return [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"),
                *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers)]


class Rejected(Exception):
    """Raised where a request is found unacceptable; carries the ``Refusal`` the client gets."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.refusal = Refusal(status, code, detail)

    @property
    def status(self) -> int:
        return self.refusal.status

    @property
    def code(self) -> str:
        return self.refusal.code

    @property
    def detail(self) -> str:
        return self.refusal.detail
