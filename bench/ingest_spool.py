"""The spool's runs of the ingress benchmark (issue 11), run by ``python -m bench.ingest``.

After the normal run, on the same local broker and with the same wrk settings:

1. ``passpost serve`` with ``PASSPOST_SPOOL_DIR`` (fresh topics, an empty spool) is warmed
   up with Kafka up: the normal path, spool configured but empty;
2. the broker is paused (SIGSTOP); one request waits out the produce deadline and is
   answered 200 from the spool, then wrk drives the ingress for ``--duration`` seconds:
   the *spooling* run, every answer a durable append (``fdatasync``, group-committed);
3. the broker is resumed (SIGCONT) and wrk drives the ingress again while the forwarder
   drains the backlog: the *draining* run (new requests queue behind the backlog, so
   they are spooled too until the forwarder has caught up); the time from SIGCONT until
   the spool is empty is measured;
4. checks: no answer but 200, the spool empty at the end, the events topic holding at
   least one record per event answered 200 (duplicates, same event id, are allowed:
   ``passpost_spool_duplicate_events_total`` says how many the producer knew of).
"""

from __future__ import annotations

import argparse
import http.client
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SpoolReport:
    spooling: Any = None  # WrkResult
    draining: Any = None
    first_answer_s: float | None = None  # the request that waited out the produce deadline
    spooled_events: float = 0.0
    forwarded_events: float = 0.0
    duplicates: float = 0.0
    drain_seconds: float | None = None  # SIGCONT -> spool empty
    answered_200: int = 0
    events_on_topic: int = 0
    append_p99_ms: float | None = None
    failures: list[str] = field(default_factory=list)


def metrics(port: int) -> dict[str, float]:
    from bench.ingest import http_get

    _, text = http_get(port, "/metrics")
    values: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def append_p99_ms(values: dict[str, float]) -> float | None:
    """p99 of passpost_spool_append_duration_seconds from its buckets, as Prometheus would (upper bound)."""
    buckets = sorted((float(match.group(1)), count) for name, count in values.items()
                     if (match := re.match(r'passpost_spool_append_duration_seconds_bucket\{le="([^"]+)"\}', name)))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= 0.99 * total) * 1000


def run_spool(wrk: str, options: argparse.Namespace, kafka: Any, env: dict[str, str], logdir: Path,
              token: str, script: Path, wrk_arguments: list[str]) -> SpoolReport:
    from bench.ingest import (
        POSTBACK_PATH,
        WARMUP_SECONDS,
        Server,
        create_topics,
        fresh_topic_names,
        log,
        run_wrk,
        settle,
        topic_records,
    )

    report = SpoolReport()
    events_topic, dead_letter_topic = fresh_topic_names()
    spool_env = {**env, "PASSPOST_EVENTS_TOPIC": events_topic, "PASSPOST_DEAD_LETTER_TOPIC": dead_letter_topic,
                 "PASSPOST_SPOOL_DIR": str(logdir / f"spool-{secrets.token_hex(4)}")}
    partitions = create_topics(spool_env)
    ingress = Server.passpost_serve("ingress-spool", spool_env, logdir)
    port = ingress.port
    log(f"starting passpost serve with a spool on port {port}")
    ingress.start()
    try:
        log(f"warming it up for {WARMUP_SECONDS} s with Kafka up (the spool stays empty)")
        run_wrk(wrk, options, port, script, wrk_arguments, WARMUP_SECONDS)
        settle(port)
        log("pausing the broker (SIGSTOP)")
        kafka.pause()
        try:
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            connection.request("POST", POSTBACK_PATH, body=Path(wrk_arguments[0]).read_bytes(),
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "text/xml"})
            status = connection.getresponse().status
            connection.close()
            report.first_answer_s = time.perf_counter() - started
            if status != 200:
                report.failures.append(f"the first request of the outage was answered {status}")
            log(f"spooling: driving the ingress for {options.duration} s with the broker paused")
            report.spooling, _ = run_wrk(wrk, options, port, script, wrk_arguments, options.duration)
            settle(port)
            report.spooled_events = metrics(port).get("passpost_spool_events", 0.0)
        finally:
            log("resuming the broker (SIGCONT)")
            kafka.resume()
        resumed = time.monotonic()
        drained = threading.Event()
        empty_at: list[float] = []

        def watch() -> None:
            while not drained.is_set():
                if metrics(port).get("passpost_spool_events", 1.0) == 0:
                    empty_at.append(time.monotonic())
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        log(f"draining: driving the ingress for {options.duration} s while the forwarder sends the backlog")
        report.draining, _ = run_wrk(wrk, options, port, script, wrk_arguments, options.duration)
        watcher.join(120)
        drained.set()
        if empty_at:
            report.drain_seconds = empty_at[0] - resumed
        else:
            report.failures.append("the spool was not empty 2 minutes after the broker was resumed")
        report.answered_200 = settle(port)
        values = metrics(port)
        report.forwarded_events = values.get("passpost_spool_forwarded_events_total", 0.0)
        report.duplicates = values.get("passpost_spool_duplicate_events_total", 0.0)
        report.append_p99_ms = append_p99_ms(values)
        report.events_on_topic = topic_records(spool_env["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"], events_topic, partitions)
    finally:
        ingress.stop()
    for name, result in (("spooling", report.spooling), ("draining", report.draining)):
        if result is not None and (result.status_other or result.socket_errors):
            report.failures.append(f"{name}: {result.status_other} answers other than 200, errors {result.errors}")
    if report.events_on_topic < report.answered_200:
        report.failures.append(f"the ingress answered 200 {report.answered_200} times but only "
                               f"{report.events_on_topic} events are on the topic")
    return report


def print_spool(report: SpoolReport, normal: Any) -> None:
    print()
    print("with a spool (PASSPOST_SPOOL_DIR), same wrk settings, against the normal path above:")
    print(f"{'':22}{'requests/s':>12}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}{'requests':>10}"
          f"{'non-200':>9}{'vs normal':>11}")
    for name, result in (("normal path", normal), ("spooling (paused)", report.spooling),
                         ("draining (resumed)", report.draining)):
        if result is None:
            continue
        ratio = result.rps / normal.rps if normal.rps else 0.0
        print(f"{name:22}{result.rps:>12.0f}{result.p50_ms:>10.2f}{result.p90_ms:>10.2f}{result.p99_ms:>10.2f}"
              f"{result.max_ms:>10.1f}{result.requests:>10}{result.status_other:>9}{ratio:>10.2f}x")
    first = f"{report.first_answer_s:.2f} s" if report.first_answer_s is not None else "n/a"
    drain = f"{report.drain_seconds:.1f} s" if report.drain_seconds is not None else "not drained"
    append = f"{report.append_p99_ms:.1f} ms" if report.append_p99_ms is not None else "n/a"
    print(f"first request of the outage answered 200 after {first} (the produce deadline); events in the spool "
          f"when the broker was resumed: {report.spooled_events:.0f}; spool empty {drain} after SIGCONT")
    rate = (f" ({report.forwarded_events / report.drain_seconds:.0f} events/s until empty)"
            if report.drain_seconds else "")
    print(f"forwarded from the spool: {report.forwarded_events:.0f}{rate}; duplicates known to the producer: "
          f"{report.duplicates:.0f}; append p99 (fdatasync, group commit): {append}")
    print(f"answered 200 (spool run, warm-up included): {report.answered_200}; events on its topic: "
          f"{report.events_on_topic}")
