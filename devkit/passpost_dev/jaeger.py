"""A real Jaeger for the tracing tests: built once with Go, cached, run on free loopback ports.

Jaeger's OpenTelemetry-based distribution (``github.com/jaegertracing/jaeger/cmd/jaeger``,
``VERSION``) is built from the Go module proxy with ``go get -tool`` in a throwaway module, into
``~/.cache/passpost/jaeger-VERSION/jaeger`` (``$PASSPOST_CACHE_DIR``), under the cache's lock
and renamed into place whole, as the Kafka jars are. Building takes minutes on two cores; the
cache keeps it. ``python -m passpost_dev.jaeger build`` (``make jaeger``) builds it ahead.

``LocalJaeger`` runs it with an in-memory store, receiving OTLP over HTTP and gRPC, its query API
(``/api/traces/{id}``, ``/api/traces?service=``) on another port, every port free on 127.0.0.1
and its config in a temporary folder: nothing listens beyond loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from passpost_dev.cache import cache_root, exclusive_lock
from passpost_dev.ports import free_port
from passpost_dev.processes import stop

VERSION = "v1.75.0"
MODULE = "github.com/jaegertracing/jaeger"
PACKAGE = f"{MODULE}/cmd/jaeger"


def cached_binary(cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / f"jaeger-{VERSION.removeprefix('v')}" / "jaeger"


def ensure_binary(cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The cached Jaeger binary, built first if missing (needs ``go``)."""
    binary = cached_binary(cache_dir)
    if binary.exists():
        return binary
    root = binary.parent.parent
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lock"):
        if binary.exists():  # another process built it while this one waited
            return binary
        go = shutil.which("go")
        if go is None:
            raise RuntimeError(f"building Jaeger {VERSION} needs Go (1.24 or later) on PATH")
        partial = binary.parent.with_name(binary.parent.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        module = partial / "module"
        module.mkdir(parents=True)
        if log is not None:
            log(f"building Jaeger {VERSION} with Go into {binary} (minutes, once)")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        for command in ([go, "mod", "init", "passpost.local/jaeger-tool"],
                        [go, "get", "-tool", f"{PACKAGE}@{VERSION}"],
                        [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial / "jaeger"), PACKAGE]):
            done = subprocess.run(command, cwd=module, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        shutil.rmtree(module)
        partial.rename(binary.parent)
    return binary


CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn

extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "127.0.0.1:{query_port}"
    grpc:
      endpoint: "127.0.0.1:{query_grpc_port}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: "127.0.0.1:{health_port}"

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{grpc_port}"
      http:
        endpoint: "127.0.0.1:{http_port}"

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class LocalJaeger:
    """``with LocalJaeger() as jaeger:`` a running Jaeger; ``otlp_http`` and ``otlp_grpc`` take spans,
    ``query_url`` answers Jaeger's HTTP query API."""

    def __init__(self, cache_dir: Path | None = None, home: Path | None = None) -> None:
        self.binary = ensure_binary(cache_dir)
        self._own_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="passpost-jaeger-")) if home is None else home
        self.home.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("query_port", "query_grpc_port", "health_port", "grpc_port",
                                                "http_port")}
        self.query_url = f"http://127.0.0.1:{ports['query_port']}"
        self.otlp_http = f"http://127.0.0.1:{ports['http_port']}"
        self.otlp_grpc = f"http://127.0.0.1:{ports['grpc_port']}"
        self._health = f"http://127.0.0.1:{ports['health_port']}/status"
        self.config = self.home / "jaeger.yaml"
        self.config.write_text(CONFIG.format(**ports))
        self.log = self.home / "jaeger.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalJaeger:
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen([str(self.binary), "--config", str(self.config)],
                                            stdout=sink, stderr=sink, cwd=self.home)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.query_url}/api/services", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"Jaeger did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None:
            stop(self.process, timeout=10)
            self.process = None
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- the query API -----------------------------------------------------------------------

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as Jaeger's query API gives it (``spans``, ``processes``), or None while it has none."""
        response = httpx.get(f"{self.query_url}/api/traces/{trace_id}", timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        data = response.json().get("data") or []
        return data[0] if data else None

    def traces(self, service: str, **params: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.query_url}/api/traces", params={"service": service, "limit": "100", **params},
                             timeout=5)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return list(response.json().get("data") or [])

    def services(self) -> list[str]:
        response = httpx.get(f"{self.query_url}/api/services", timeout=5)
        response.raise_for_status()
        return list(response.json().get("data") or [])

    def wait_for_trace(self, trace_id: str, until: Callable[[dict[str, Any]], bool],
                       timeout: float = 30) -> dict[str, Any]:
        """Poll until the trace exists and ``until(trace)`` holds; the last trace seen in the error otherwise."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] | None = None
        while True:
            seen = self.trace(trace_id)
            if seen is not None and until(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id} not complete after {timeout} s: {summarize(seen)}")
            time.sleep(0.2)


def summarize(trace: dict[str, Any] | None) -> list[str]:
    """``service: operation`` of each span, for a failure message."""
    if trace is None:
        return []
    processes = trace.get("processes", {})
    return sorted(f"{processes.get(span['processID'], {}).get('serviceName')}: {span['operationName']}"
                  for span in trace.get("spans", []))


def main(argv: list[str] | None = None) -> int:
    """``build``: the cached binary (built if missing). ``serve``: a Jaeger to look at local traces in,
    until Ctrl-C, its OTLP endpoint and query address printed."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        print(ensure_binary(log=lambda line: print(line, file=sys.stderr)))
        return 0
    if args[:1] == ["serve"]:
        ensure_binary(log=lambda line: print(line, file=sys.stderr))
        with LocalJaeger() as jaeger:
            print(f"OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_http}\n"
                  f"traces: {jaeger.query_url}/api/traces?service=passpost-ingress", flush=True)
            try:
                assert jaeger.process is not None
                jaeger.process.wait()
            except KeyboardInterrupt:
                pass
        return 0
    print("usage: python -m passpost_dev.jaeger build|serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
