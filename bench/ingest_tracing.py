"""``python -m bench.ingest --tracing``: the ingress's CPU per request with tracing off, on at a sampling ratio
of 0.05 and on at 1.0 (issue 19), beside the same ingress before tracing existed, in one run.

Each mode is a fresh ``passpost serve`` driven by wrk with the vendor's example; the modes take turns
(``--rounds``), so that the machine's noise (it is shared) falls on all of them alike, and each mode's figure
is its median round. "before" runs a git revision's code (``--tracing-baseline``, default the commit before
tracing came) exported into a temporary folder laid out as installed (``passpost/``, ``passpost/ingest/``,
...), first on ``PYTHONPATH``, with the same virtual environment. The spans go to a real Jaeger
(``passpost_dev.jaeger``), so that exporting costs what it costs.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.ingest import (
    POST_LUA,
    ROOT,
    WARMUP_SECONDS,
    BenchError,
    Server,
    cpu_seconds,
    create_topics,
    fresh_topic_names,
    kafka_process,
    log,
    passpost_env,
    require_wrk,
    run_wrk,
    settle,
    wrk_script,
)

# The commit before issue 19's first: the ingress as it was.
BASELINE = "a77afc8"
MODES = ("before", "off", "0.05", "1.0")
# Installed name -> folder of the repository (pyproject's package-dir).
LAYOUT = {"passpost": "passpost", "passpost/ingest": "ingest", "passpost/schemas": "schemas",
          "passpost/consumers": "consumers"}


@dataclass
class TracingReport:
    rounds: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # mode -> (cpu ms/request, req/s)
    failures: list[str] = field(default_factory=list)

    def median_cpu(self, mode: str) -> float:
        return statistics.median(cpu for cpu, _ in self.rounds[mode])

    def median_rate(self, mode: str) -> float:
        return statistics.median(rate for _, rate in self.rounds[mode])


def export_revision(revision: str, into: Path) -> Path:
    """``revision``'s code laid out as installed, for ``PYTHONPATH``."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision, *LAYOUT.values()], cwd=ROOT,
                             check=True, capture_output=True).stdout
    source = into / "source"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    tree = into / "tree"
    for installed, folder in LAYOUT.items():
        shutil.copytree(source / folder, tree / installed, dirs_exist_ok=True)
    return tree


def run_tracing(options: argparse.Namespace) -> TracingReport:
    from passpost_dev.jaeger import LocalJaeger

    wrk = require_wrk()
    report = TracingReport({mode: [] for mode in MODES})
    logdir = Path(tempfile.mkdtemp(prefix="passpost-bench-tracing-"))
    script = wrk_script(POST_LUA.read_text(), logdir, "post.lua")
    log(f"server logs in {logdir}")
    baseline = export_revision(options.tracing_baseline, logdir / "baseline")
    with kafka_process() as (bootstrap, _), LocalJaeger(home=logdir / "jaeger") as jaeger:
        for round_number in range(options.rounds):
            # A different order each round: no mode always runs first (or last) on a machine that drifts.
            order = MODES[round_number % len(MODES):] + MODES[:round_number % len(MODES)]
            for mode in order:
                events_topic, dead_letter_topic = fresh_topic_names()
                token = "bench-tracing"
                env = passpost_env(bootstrap, events_topic, dead_letter_topic, token)
                env = {key: value for key, value in env.items() if not key.startswith("OTEL_")}
                if mode == "before":
                    env["PYTHONPATH"] = str(baseline)
                elif mode != "off":
                    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
                                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": mode})
                create_topics(env)
                ingress = Server.passpost_serve(f"ingress-{mode}-{round_number}", env, logdir)
                ingress.start()
                try:
                    arguments = [str(options.body), token]
                    run_wrk(wrk, options, ingress.port, script, arguments, WARMUP_SECONDS)
                    warm = settle(ingress.port)
                    cpu_before = cpu_seconds(ingress.server_pid)
                    result, _ = run_wrk(wrk, options, ingress.port, script, arguments, options.duration)
                    cpu = cpu_seconds(ingress.server_pid) - cpu_before
                    answered = settle(ingress.port) - warm
                    if result.status_other or result.socket_errors:
                        report.failures.append(f"{mode}: {result.status_other} answers other than 200")
                    report.rounds[mode].append((1000 * cpu / max(answered, 1), answered / options.duration))
                    log(f"round {round_number + 1} {mode}: {report.rounds[mode][-1][0]:.3f} ms CPU/request, "
                        f"{report.rounds[mode][-1][1]:.0f} requests/s")
                finally:
                    ingress.stop()
        services = jaeger.services()
        if "passpost-ingress" not in services:
            report.failures.append(f"no trace reached Jaeger (services: {services})")
    return report


def print_tracing_report(report: TracingReport, options: argparse.Namespace) -> bool:
    print(f"\nIngress CPU per request by tracing mode ({options.rounds} rounds of {options.duration} s each, "
          f"{options.connections} connections, median round)\n")
    print("| mode | CPU ms/request | vs before | requests/s | rounds (ms/request) |")
    print("| --- | --- | --- | --- | --- |")
    before = report.median_cpu("before")
    labels = {"before": f"before tracing ({options.tracing_baseline})", "off": "tracing off (no endpoint)",
              "0.05": "on, parentbased_traceidratio 0.05", "1.0": "on, parentbased_traceidratio 1.0"}
    for mode in MODES:
        cpu = report.median_cpu(mode)
        rounds = ", ".join(f"{value:.3f}" for value, _ in report.rounds[mode])
        print(f"| {labels[mode]} | {cpu:.3f} | {cpu / before:.3f} | {report.median_rate(mode):.0f} | {rounds} |")
    met = report.median_cpu("off") <= before * 1.02
    print(f"\ntracing off within 2 % of before: {'yes' if met else 'no'}")
    for failure in report.failures:
        print(f"FAILED: {failure}")
    return met


def add_tracing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracing", action="store_true",
                        help="only compare tracing modes: before, off, on at 0.05 and at 1.0 (issue 19)")
    parser.add_argument("--rounds", type=int, default=3, help="--tracing: rounds of every mode (default 3)")
    parser.add_argument("--tracing-baseline", default=BASELINE,
                        help=f"--tracing: the git revision measured as 'before' (default {BASELINE})")


__all__ = ["BenchError", "add_tracing_options", "print_tracing_report", "run_tracing"]
