"""Ingest credentials (ingest/auth.py): query token, Bearer, Basic; rotation; open mode."""

from __future__ import annotations

import base64

import pytest
from starlette.requests import Request

from passpost.ingest.auth import TokenCheck


def request(query: str = "", authorization: list[str] | None = None) -> Request:
    headers = [(b"authorization", value.encode("latin-1")) for value in authorization or []]
    return Request({"type": "http", "method": "POST", "path": "/", "query_string": query.encode(), "headers": headers})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CHECK = TokenCheck(["current-token", "next-token"])


@pytest.mark.parametrize(
    "req",
    [
        request("token=current-token"),
        request("a=1&token=next-token"),
        request(authorization=["Bearer current-token"]),
        request(authorization=["bearer next-token"]),
        request(authorization=[basic("skycore", "current-token")]),
        request(authorization=[basic("", "next-token")]),
        request("token=wrong", authorization=["Bearer current-token"]),  # any one valid is enough
    ],
)
def test_accepted(req: Request) -> None:
    assert CHECK.allows(req)


@pytest.mark.parametrize(
    "req",
    [
        request(),
        request("token="),
        request("token=current-token-and-more"),
        request("token=current"),
        request(authorization=["Bearer "]),
        request(authorization=["Bearer wrong"]),
        request(authorization=["Token current-token"]),
        request(authorization=[basic("current-token", "")]),  # the token is the password, not the user
        request(authorization=["Basic !!!not-base64"]),
        request(authorization=["Basic " + base64.b64encode(b"no-colon").decode()]),
    ],
)
def test_refused(req: Request) -> None:
    assert not CHECK.allows(req)


def test_open_access_only_when_asked_and_no_token_configured() -> None:
    assert TokenCheck([], open_access=True).allows(request())
    assert not TokenCheck([], open_access=False).allows(request())
    assert not TokenCheck(["t"], open_access=True).allows(request())
