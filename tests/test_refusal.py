"""One refusal type and one rendering of it (ingest/refusal.py)."""

from __future__ import annotations

import json

from passpost.ingest.refusal import Refusal, Rejected


def test_a_refusal_renders_the_same_json_body_and_headers_wherever_it_is_decided() -> None:
    refusal = Refusal(503, "spool_full", "Retry « later ».", (("Retry-After", "30"),))
    body = refusal.body()
    assert json.loads(body) == {"error": "spool_full", "detail": "Retry « later »."}
    assert b", " not in body  # compact, as Starlette's JSONResponse writes
    assert refusal.raw_headers(body) == [(b"content-length", str(len(body)).encode()),
                                         (b"content-type", b"application/json"), (b"retry-after", b"30")]


def test_rejected_carries_its_refusal() -> None:
    rejected = Rejected(422, "missing_origin", "Postback 1 has no ORIGIN.")
    assert rejected.refusal == Refusal(422, "missing_origin", "Postback 1 has no ORIGIN.")
    assert (rejected.status, rejected.code, str(rejected)) == (422, "missing_origin", "Postback 1 has no ORIGIN.")
