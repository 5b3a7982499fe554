"""The benchmark's baseline: a Starlette endpoint that only answers 200.

Served exactly as ``passpost serve`` serves the ingress (``ingest/server.py``): uvicorn
with httptools on uvloop, one process, lifespan on, no access log, no server header.
Whatever the ingress costs beyond this is the ingress's own work (auth, parsing, Avro,
Kafka, metrics, logging).

    python bench/bare_app.py --port 8001
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from passpost.ingest.server import uvicorn_config
from passpost.settings import defaults


async def ok(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/postbacks/passes", ok, methods=["POST"]),
        Route("/readyz", ok, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    options = parser.parse_args()
    # The very uvicorn settings `passpost serve` uses, so the comparison is like for like.
    settings = defaults().replace(host=options.host, port=options.port)
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(uvicorn.Server(uvicorn_config(app, settings)).serve())


if __name__ == "__main__":
    main()
