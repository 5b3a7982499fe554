"""The alerts benchmark: postback accepted by the ingress -> alert delivered at a webhook.

    python -m bench.alerts [--duration 60] [--rate 1000] [--failure-ratio 0.05]
                           [--origins 20] [--resolve-after 5] [--connections 64] [--warmup 3]

What one run does (see BENCHMARKS.md, "Alerts", for the figures measured so far):

1. starts a local Kafka broker, or uses ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS``, and creates
   fresh events and dead-letter topics (the helpers of ``bench/ingest.py``);
2. starts a webhook receiver in this process (a threaded ``http.server``) that records,
   for every POST, the wall-clock time its body had arrived and the JSON payload;
3. runs ``passpost serve`` and ``passpost consume alerts`` as processes: the consumer in
   its own consumer group, with its own state file in a temporary directory, the webhook
   sink pointed at the receiver, the log sink off, and
   ``PASSPOST_ALERT_RESOLVE_AFTER_SECONDS=--resolve-after`` so that alerts also resolve
   during the run;
4. warms the ingress and the consumer up with ``--warmup`` seconds of N801s at the same
   rate (no alert; ``--warmup 0`` measures from a cold start), then drives the ingress with
   wrk for ``--duration`` seconds at about ``--rate`` postbacks/s
   (a generated Lua script paces each wrk thread on the clock: request n of a thread is
   due at n / (rate / threads) seconds after the thread started, so the rate does not
   depend on the latency). Each postback is one NOTIFICATION with a unique serial number;
   a ``--failure-ratio`` share of them fail, with N802, N803, N811 or N899 (an unknown
   code) in equal parts, the rest are N801. The run is cut into ``--origins`` phases of
   equal length and the failures of phase k come from origin ``BENCH_ORIGIN_k``, so new
   alert groups fire all through the run (four per phase, five when the phase's N802s
   reach the escalation to critical), and the groups of phase k go quiet, and resolve,
   ``--resolve-after`` seconds after it ended;
5. waits until every group has resolved (``--resolve-after`` plus a margin), then counts
   the events on the topic and the consumer's notifications;
6. prints, for firings and resolutions separately, count, p50, p99 and max of the latency,
   the achieved request rate and the non-200 count.

What is measured:

* firing: for each alert (fingerprint), its first ``firing`` notification; latency =
  arrival at the webhook receiver - the alert's ``first_seen`` annotation, which is the
  ``received_at`` the ingress stamped on the group's oldest event (taken when the request
  was accepted, before it was produced to Kafka, so this includes the produce and is a
  little longer than "from the 200 the client saw");
* resolution: for each alert, its ``resolved`` notification; latency = arrival -
  (``last_seen`` + ``--resolve-after``), i.e. how late the resolution arrived after the
  quiet period, counted from the ``received_at`` of the group's last event. The consumer
  measures quiet time from when it *processed* the last event and checks once a second, so
  this includes the pipeline delay of that last event and up to a second of tick.

Exit status: 0 when the run worked (the target is reported, not enforced, unless
``--strict``), 1 when a check failed (non-200 answers, an alert that never fired or never
resolved, the events topic not matching the 200s), 2 when something needed is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from bench.ingest import (  # the ingress benchmark's helpers
    Server,
    WrkResult,
    add_wrk_options,
    bench_main,
    create_topics,
    fresh_topic_names,
    kafka_broker,
    log,
    passpost_command,
    passpost_env,
    require_wrk,
    run_wrk,
    settle,
    topic_records,
    wrk_script,
)
from passpost_dev.ports import free_port

TARGET_P99_S = 1.0
FAILURE_CODES = ("N802", "N803", "N811", "N899")  # N899: a code the vendor does not list (outcome UNKNOWN)

# Paced wrk script. Arguments after "--": token, requests/s per thread, failure ratio,
# seconds per origin phase, number of origins. LuaJIT's ffi reads the monotonic clock.
LUA_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
   ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local counter = 0
function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

local codes = {"N802", "N803", "N811", "N899"}

function init(args)
   token = args[1]
   interval_ms = 1000 / tonumber(args[2])
   failure_ratio = tonumber(args[3])
   phase_ms = tonumber(args[4]) * 1000
   origins = tonumber(args[5])
   math.randomseed(id * 7919 + os.time())
   start_ms = nil
   run_tag = math.floor(now_ms()) % 1000000000  -- warm-up and measured run: distinct serials
   sent = 0
   slots = 0
   ok = 0
   not_ok = 0
   failures = 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "text/xml"
   wrk.headers["Authorization"] = "Bearer " .. token
end

function delay()
   if start_ms == nil then start_ms = now_ms() end
   -- each call claims the next slot, so connections waiting at once get distinct slots
   local due = start_ms + slots * interval_ms
   slots = slots + 1
   local wait = due - now_ms()
   if wait < 0 then return 0 end
   return wait
end

function request()
   if start_ms == nil then start_ms = now_ms() end
   sent = sent + 1
   local elapsed = now_ms() - start_ms
   local code, origin
   if math.random() < failure_ratio then
      failures = failures + 1
      code = codes[math.random(#codes)]
      origin = string.format("BENCH_ORIGIN_%02d", math.min(math.floor(elapsed / phase_ms), origins - 1))
   else
      code = "N801"
      origin = string.format("BENCH_OK_%02d", math.random(origins) - 1)
   end
   local body = "<POSTBACK><ORIGIN>" .. origin .. "</ORIGIN><STATUSCODE>" .. code .. "</STATUSCODE>"
      .. "<REFERENCEDBY>Email</REFERENCEDBY><REFERENCEVALUE>bench@example.com</REFERENCEVALUE>"
      .. string.format("<CUSTOMPASSID>ID-%d-%d-%d</CUSTOMPASSID>", run_tag, id, sent)
      .. string.format("<SERIALNUMBER>BENCH-%d-%d-%09d</SERIALNUMBER>", run_tag, id, sent)
      .. "<TIMESTAMP>2026-11-26T11:37:11-05:00</TIMESTAMP></POSTBACK>"
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status == 200 then ok = ok + 1 else not_ok = not_ok + 1 end
end

-- done(): bench/report.lua, appended by wrk_script.
"""


# --------------------------------------------------------------------------- the webhook receiver


@dataclass
class Received:
    arrived: float  # time.time() once the whole body was read
    payload: dict


class Receiver:
    """A threaded HTTP server recording each POST's arrival time and JSON body."""

    def __init__(self) -> None:
        self.notifications: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.time()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body[:200].decode(errors="replace")}
                with receiver.lock:
                    receiver.notifications.append(Received(arrived, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.notifications)


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    wrk: WrkResult | None = None
    failures_sent: int = 0
    server_200s: int | None = None
    events_on_topic: int | None = None
    dead_letters: int | None = None
    notifications: list[Received] = field(default_factory=list)
    firing: dict[str, float] = field(default_factory=dict)  # fingerprint -> seconds
    resolved: dict[str, float] = field(default_factory=dict)
    repeats: int = 0
    alertnames: dict[str, int] = field(default_factory=dict)
    slowest: list[tuple[float, str, float]] = field(default_factory=list)  # latency, labels, first_seen
    started: float = 0.0  # time.time() when wrk started
    failures: list[str] = field(default_factory=list)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def paced_arguments(options: argparse.Namespace, token: str, seconds: int, failure_ratio: float) -> list[str]:
    """The paced script's arguments: token, requests/s per thread, failure ratio, seconds per phase, origins."""
    return [token, f"{options.rate / options.threads:g}", f"{failure_ratio:g}", f"{seconds / options.origins:g}",
            str(options.origins)]


def wait_resolved(receiver: Receiver, seconds: float) -> None:
    """Wait until every fired fingerprint has its resolution, or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fired, resolved = set(), set()
        for received in receiver.snapshot():
            for alert in received.payload.get("alerts", []):
                (resolved if alert["status"] == "resolved" else fired).add(alert["fingerprint"])
        if fired and fired <= resolved:
            return
        time.sleep(0.5)


def analyse(report: Report, resolve_after: float) -> None:
    seen_firing: set[str] = set()
    for received in sorted(report.notifications, key=lambda r: r.arrived):
        for alert in received.payload.get("alerts", []):
            fingerprint, annotations = alert["fingerprint"], alert["annotations"]
            if alert["status"] == "firing":
                if fingerprint in seen_firing:
                    report.repeats += 1
                    continue
                seen_firing.add(fingerprint)
                first_seen = parse_time(annotations["first_seen"])
                report.firing[fingerprint] = received.arrived - first_seen
                labels = alert["labels"]
                report.slowest.append((received.arrived - first_seen,
                                       f"{labels.get('alertname')}/{labels.get('severity')} {labels.get('origin')}",
                                       first_seen))
                name = f"{alert['labels'].get('alertname')}/{alert['labels'].get('severity')}"
                report.alertnames[name] = report.alertnames.get(name, 0) + 1
            elif fingerprint not in report.resolved:
                report.resolved[fingerprint] = received.arrived - (parse_time(annotations["last_seen"]) + resolve_after)
    report.slowest = sorted(report.slowest, reverse=True)[:3]
    never_resolved = seen_firing - set(report.resolved)
    if never_resolved:
        report.failures.append(f"{len(never_resolved)} alert(s) fired but never resolved")
    if not report.firing:
        report.failures.append("no alert fired")


def run(options: argparse.Namespace) -> Report:
    wrk = require_wrk()
    report = Report()
    token = secrets.token_urlsafe(24)
    events_topic, dead_letter_topic = fresh_topic_names()
    workdir = Path(tempfile.mkdtemp(prefix="passpost-bench-alerts-"))
    script = wrk_script(LUA_SCRIPT, workdir, "alerts.lua")
    log(f"logs, state file and wrk script in {workdir}")

    with kafka_broker() as bootstrap, Receiver() as receiver:
        env = passpost_env(bootstrap, events_topic, dead_letter_topic, token)
        partitions = create_topics(env)
        log(f"topics {events_topic} and {dead_letter_topic} created, empty")

        ingress = Server.passpost_serve("ingress", env, workdir)
        port = ingress.port
        consumer_port = free_port()
        consumer_env = {
            **env,
            "PASSPOST_CONSUMER_PORT": str(consumer_port),
            "PASSPOST_CONSUMER_GROUP": events_topic.removesuffix(".pass-postbacks.v1") + "-alerts",
            "PASSPOST_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/alerts",
            "PASSPOST_ALERT_LOG": "false",
            "PASSPOST_ALERT_STATE_FILE": str(workdir / "alerts-state.json"),
            "PASSPOST_ALERT_RESOLVE_AFTER_SECONDS": f"{options.resolve_after:g}",
        }
        consumer = Server("consumer-alerts", [*passpost_command(), "consume", "alerts"], consumer_port,
                          consumer_env, workdir)
        log(f"starting passpost serve on port {port}, passpost consume alerts (health on {consumer_port}), "
            f"webhook receiver on {receiver.port}")
        ingress.start()
        try:
            consumer.start()
            try:
                log(f"driving the ingress at {options.rate:g}/s for {options.duration} s, "
                    f"{options.failure_ratio:.0%} failures over {options.origins} origins")
                if options.warmup:
                    log(f"warming up for {options.warmup} s at {options.rate:g}/s, successes only (no alert)")
                    run_wrk(wrk, options, port, script, paced_arguments(options, token, options.warmup, 0.0),
                            options.warmup)
                report.started = time.time()
                report.wrk, report.failures_sent = run_wrk(
                    wrk, options, port, script,
                    paced_arguments(options, token, options.duration, options.failure_ratio), options.duration)
                report.server_200s = settle(port)
                report.events_on_topic = topic_records(bootstrap, events_topic, partitions)
                report.dead_letters = topic_records(bootstrap, dead_letter_topic, partitions)
                wait = options.resolve_after + 15
                log(f"waiting up to {wait:g} s for every alert to resolve")
                wait_resolved(receiver, wait)
                time.sleep(1.5)  # a late duplicate or repeat would show up here
            finally:
                consumer.stop()
        finally:
            ingress.stop()
        report.notifications = receiver.snapshot()

    analyse(report, options.resolve_after)
    result = report.wrk
    assert result is not None
    if result.status_other or result.socket_errors:
        report.failures.append(f"{result.status_other} non-200 answers, wrk errors {result.errors}")
    if report.events_on_topic != report.server_200s:
        report.failures.append(f"the ingress answered 200 {report.server_200s} times but "
                               f"{report.events_on_topic} events are on the topic")
    if report.dead_letters:
        report.failures.append(f"{report.dead_letters} dead letters were written")
    if consumer.log_path.exists() and "Traceback" in consumer.log_path.read_text(errors="replace"):
        report.failures.append(f"the consumer logged a traceback: see {consumer.log_path}")
    return report


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:12} count 0"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, int(len(ordered) * 0.99 + 0.5) - 1))]
    return (f"{name:12} count {len(ordered):4}  p50 {statistics.median(ordered) * 1000:7.0f} ms  "
            f"p99 {p99 * 1000:7.0f} ms  max {ordered[-1] * 1000:7.0f} ms  min {ordered[0] * 1000:6.0f} ms")


def print_report(report: Report, options: argparse.Namespace) -> bool:
    result = report.wrk
    assert result is not None
    firing = list(report.firing.values())
    print()
    print(f"passpost alerts benchmark: {options.duration} s at {options.rate:g} postbacks/s asked, "
          f"{options.failure_ratio:.0%} failures (N802/N803/N811/N899) over {options.origins} origin phases, "
          f"resolve after {options.resolve_after:g} s; wrk -t{options.threads} -c{options.connections}; "
          f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}")
    print(f"warm-up: {options.warmup} s of N801 only at the same rate before the measured run" if options.warmup
          else "no warm-up: the load starts on freshly started processes")
    print(f"requests: {result.requests} in {result.seconds:.1f} s = {result.rps:.0f}/s achieved; "
          f"answered 200: {result.status_200}, non-200: {result.status_other}, socket errors: {result.socket_errors}; "
          f"request p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms")
    print(f"failures posted: {report.failures_sent}; since the topic was created (warm-up included): answered 200 "
          f"by the server {report.server_200s}, events on the topic {report.events_on_topic}, "
          f"dead letters {report.dead_letters}")
    print(f"notifications at the webhook: {len(report.notifications)} ({len(report.firing)} first firings, "
          f"{report.repeats} repeats, {len(report.resolved)} resolutions); alerts fired by name/severity: "
          + ", ".join(f"{name} {count}" for name, count in sorted(report.alertnames.items())))
    print()
    print("latency, acceptance (received_at of the group's first event) -> first firing notification at the webhook:")
    print("  " + summary("firing", firing))
    if report.slowest:
        print("  slowest: " + "; ".join(
            f"{latency * 1000:.0f} ms {name} (first event {first_seen - report.started:.1f} s into the load)"
            for latency, name, first_seen in report.slowest))
    print(f"lateness of the resolution, (received_at of the group's last event + {options.resolve_after:g} s) -> "
          "resolved notification at the webhook:")
    print("  " + summary("resolved", list(report.resolved.values())))
    ordered = sorted(firing)
    p99 = ordered[min(len(ordered) - 1, max(0, int(len(ordered) * 0.99 + 0.5) - 1))] if ordered else None
    met = p99 is not None and p99 < TARGET_P99_S
    print()
    print(f"  {'met    ' if met else 'NOT MET'}  firing p99 < {TARGET_P99_S:g} s: "
          + (f"{p99 * 1000:.0f} ms" if p99 is not None else "no alert"))
    for failure in report.failures:
        print(f"  FAILED   {failure}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark postback acceptance -> alert at a webhook.")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="postbacks per second (default 1000)")
    parser.add_argument("--failure-ratio", type=float, default=0.05, help="share of failing postbacks (default 0.05)")
    parser.add_argument("--origins", type=int, default=20,
                        help="origins the failures move through, one phase each (default 20)")
    parser.add_argument("--resolve-after", type=float, default=5.0,
                        help="PASSPOST_ALERT_RESOLVE_AFTER_SECONDS for the consumer (default 5)")
    add_wrk_options(parser, connections=64,
                    connections_help="wrk connections (default 64: enough that the pacing, not the latency, sets the "
                                     "rate)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of N801-only load (no alert) before the measured run; 0: none (default 3)")
    return bench_main(parser, argv, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
