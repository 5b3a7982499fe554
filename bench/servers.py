"""Candidates alternated in one run, against the bare Starlette endpoint (issue 22).

Every round drives each candidate in turn (the order rotates from round to round) with
the same wrk load as ``bench/ingest.py``, so that a busy machine weighs on all of them
alike, and reports each one's CPU per acknowledged request (the whole process tree, from
/proc) and requests/s as ratios to the bare endpoint's in the same round.

Candidates:

* ``bare-uvicorn``: ``bench/bare_app.py`` (Starlette under uvicorn with the ingress's
  connection-limited httptools protocol), the baseline of every ratio;
* ``bare-granian``: the same Starlette app under granian (ASGI, HTTP in Rust, uvloop);
* ``bare-protocol``: ``bench/bare_protocol.py``, an ``asyncio.Protocol`` over httptools
  with no ASGI layer, the floor of an own server;
* ``--ingress LABEL=VAR=VALUE,...``: ``passpost serve`` with those ``PASSPOST_*`` settings
  (``--ingress today=`` for the defaults), on a local broker started for the run; its
  answers 200 are checked against the events on the topic.

    python -m bench.servers --rounds 3 --duration 10 --bare bare-uvicorn,bare-granian,bare-protocol \
        --ingress today=
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ingest import (
    BARE_APP,
    POST_LUA,
    ROOT,
    VENDOR_EXAMPLE,
    WARMUP_SECONDS,
    BenchError,
    Server,
    child_pids,
    cpu_seconds,
    create_topics,
    fresh_topic_names,
    kafka_process,
    log,
    passpost_env,
    require_wrk,
    run_wrk,
    settle,
    topic_records,
    wrk_script,
)
from passpost_dev.ports import free_port

BARE_COMMANDS = {
    "bare-uvicorn": lambda port: [sys.executable, str(BARE_APP), "--port", str(port)],
    "bare-granian": lambda port: [str(Path(sys.executable).parent / "granian"), "--interface", "asgi",
                                  "--loop", "uvloop", "--workers", "1", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-ws", "--log-level", "warning", "bench.bare_app:app"],
    "bare-protocol": lambda port: [sys.executable, str(ROOT / "bench" / "bare_protocol.py"), "--port", str(port)],
}


@dataclass
class Measure:
    label: str
    round: int
    rps: float
    p99_ms: float
    cpu_ms: float
    answers: int
    extra: dict[str, Any] = field(default_factory=dict)


def tree_cpu(pid: int) -> float:
    total = 0.0
    for each in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(each)
    return total


def drive(wrk: str, options: argparse.Namespace, server: Server, label: str, round_: int, script: Path,
          arguments: list[str], counts_from_metrics: bool) -> Measure:
    run_wrk(wrk, options, server.port, script, arguments, WARMUP_SECONDS)
    before_200s = settle(server.port) if counts_from_metrics else 0
    pid = server.process.pid if server.process is not None else 0
    cpu_before = tree_cpu(pid)
    result, _ = run_wrk(wrk, options, server.port, script, arguments, options.duration)
    cpu = tree_cpu(pid) - cpu_before
    answers = (settle(server.port) - before_200s) if counts_from_metrics else result.status_200
    if result.status_other or result.socket_errors:
        raise BenchError(f"{label}: {result.status_other} non-200 answers, errors {result.errors}")
    measure = Measure(label, round_, result.rps, result.p99_ms, 1000 * cpu / max(answers, 1), answers)
    log(f"round {round_} {label}: {result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms, "
        f"{measure.cpu_ms:.3f} ms CPU per answer 200")
    return measure


def run(options: argparse.Namespace) -> list[Measure]:
    wrk = require_wrk()
    token = secrets.token_urlsafe(24)
    logdir = Path(tempfile.mkdtemp(prefix="passpost-servers-"))
    script = wrk_script(POST_LUA.read_text(), logdir, "post.lua")
    arguments = [str(options.body), token]
    measures: list[Measure] = []
    candidates = [("bare", name) for name in options.bare] + [("ingress", spec) for spec in options.ingress]
    with kafka_process() as (bootstrap, _kafka):
        events_topic, dead_letter_topic = fresh_topic_names()
        env = passpost_env(bootstrap, events_topic, dead_letter_topic, token)
        partitions = create_topics(env)
        for round_ in range(1, options.rounds + 1):
            shift = (round_ - 1) % len(candidates)
            for kind, spec in candidates[shift:] + candidates[:shift]:
                if kind == "bare":
                    port = free_port()
                    server = Server(spec, BARE_COMMANDS[spec](port), port, env, logdir)
                    label, from_metrics = spec, False
                else:
                    label, _, assignments = spec.partition("=")
                    extra = dict(item.split("=", 1) for item in assignments.split(",") if item)
                    server = Server.passpost_serve(f"{label}-{round_}", {**env, **extra}, logdir)
                    from_metrics = True
                server.start()
                try:
                    measures.append(drive(wrk, options, server, label, round_, script, arguments, from_metrics))
                finally:
                    server.stop()
        served = settle_total = 0
        with contextlib.suppress(Exception):
            settle_total = topic_records(bootstrap, events_topic, partitions)
        served = settle_total
        log(f"events on the topic after all rounds: {served}")
    return measures


def print_table(measures: list[Measure], baseline: str) -> None:
    rounds = sorted({m.round for m in measures})
    labels = list(dict.fromkeys(m.label for m in measures))
    print(f"\n| candidate | CPU ms per answer 200 (rounds) | × {baseline} CPU | req/s (rounds) | "
          f"of {baseline} req/s | p99 ms (rounds) |")
    print("| --- | --- | ---: | --- | ---: | --- |")
    by = {(m.label, m.round): m for m in measures}
    for label in labels:
        mine = [by[(label, r)] for r in rounds if (label, r) in by]
        base = [by[(baseline, m.round)] for m in mine if (baseline, m.round) in by]
        cpu_ratio = statistics.median(m.cpu_ms / b.cpu_ms for m, b in zip(mine, base, strict=True)) if base else 0
        rps_ratio = statistics.median(m.rps / b.rps for m, b in zip(mine, base, strict=True)) if base else 0
        print(f"| {label} | {' / '.join(f'{m.cpu_ms:.3f}' for m in mine)} | {cpu_ratio:.2f} | "
              f"{' / '.join(f'{m.rps:.0f}' for m in mine)} | {rps_ratio:.2f} | "
              f"{' / '.join(f'{m.p99_ms:.1f}' for m in mine)} |")
    print("\nBENCH_MEASURES " + json.dumps([m.__dict__ for m in measures]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--body", type=Path, default=VENDOR_EXAMPLE)
    parser.add_argument("--bare", type=lambda value: [v for v in value.split(",") if v], default=["bare-uvicorn"],
                        help=f"bare candidates, comma-separated, of {', '.join(BARE_COMMANDS)}")
    parser.add_argument("--ingress", action="append", default=[], metavar="LABEL=VAR=VALUE,...")
    options = parser.parse_args(argv)
    try:
        measures = run(options)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    print_table(measures, options.bare[0] if options.bare else measures[0].label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
