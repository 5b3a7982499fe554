"""Who may post: ingest tokens from the URL, a Bearer header or a Basic password.

Any one valid token is enough, and several tokens can be valid at once so that a token
can be rotated without downtime. Tokens are compared as SHA-256 digests with
``hmac.compare_digest`` against every configured token, so neither the position of the
first differing byte nor the length of a token shows in the response time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl


class TokenCheck:
    def __init__(self, tokens: Iterable[str], *, open_access: bool = False) -> None:
        self._digests = [_digest(token.encode()) for token in tokens]
        self.open_access = open_access and not self._digests

    def allows(self, scope: Mapping[str, Any]) -> bool:
        """Whether the request of ``scope`` (an ASGI scope, or a Starlette ``Request``) may post."""
        if self.open_access:
            return True
        granted = False
        for presented in presented_tokens(scope):
            digest = _digest(presented)
            for expected in self._digests:
                # No early exit: every comparison runs whatever matched.
                granted |= hmac.compare_digest(digest, expected)
        return granted


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def presented_tokens(scope: Mapping[str, Any]) -> list[bytes]:
    tokens: list[bytes] = []
    query: bytes = scope.get("query_string", b"")
    if b"token=" in query:
        # Percent-escapes decoded as Latin-1 map each byte to one character and back, so any
        # bytes a client escapes (%FF, UTF-8 of any character) reach the comparison as sent.
        tokens.extend(value.encode("latin-1") for key, value in parse_qsl(query.decode("latin-1"), encoding="latin-1")
                      if key == "token")
    for name, value in scope["headers"]:
        if name != b"authorization":
            continue
        scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer" and credentials:
            tokens.append(credentials.encode("latin-1"))
        elif scheme == "basic" and credentials:
            password = _basic_password(credentials)
            if password is not None:
                tokens.append(password)
    return tokens


def _basic_password(credentials: str) -> bytes | None:
    try:
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    _, separator, password = decoded.partition(b":")
    return password if separator else None
