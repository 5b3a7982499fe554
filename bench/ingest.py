"""The ingress benchmark: `passpost serve` against a bare Starlette endpoint, with wrk.

    python -m bench.ingest [--duration 20] [--connections 32] [--threads 2]

What one run does (see BENCHMARKS.md for the figures measured so far):

1. checks that ``wrk`` is installed (``sudo apt-get install -y wrk``);
2. starts a local Kafka broker (``passpost_dev.kafka``), or uses the one named by
   ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS``, and creates fresh, empty events and
   dead-letter topics for this run;
3. runs ``passpost serve`` as one process (its own server over httptools, uvloop, one worker, logs
   as the production overlay writes them: JSON at info, an access line per request) with
   a generated token, waits for ``/readyz``, warms it up, then drives it with wrk for
   ``--duration`` seconds at ``--connections`` connections, each request posting the
   vendor's example (``tests/data/vendor_example.xml``, raw body, Bearer token) through
   ``bench/post.lua``; then as long again with ``bench/well_formed_example.xml`` (the
   same postback, its root start tag mended, so parsed at once instead of recovered);
4. checks that every request answered 200 was acknowledged by Kafka: the events topic
   must hold exactly as many records as the server answered 200, and at least as many
   as wrk counted (a request still in flight when wrk stops is answered, and produced,
   after wrk hung up, so wrk never sees that 200);
5. posts a bundle of ``--bundle-items`` NOTIFICATION items ``--bundle-posts`` times, one
   after the other, and checks each answer is a 200 with one event per item;
6. reads the ingress's peak resident memory (VmHWM) and stops it;
7. runs ``bench/bare_app.py`` (a Starlette endpoint that only answers 200) under the
   same uvicorn settings and drives it identically;
8. prints requests/s, p50 and p99 of each, the ratio, the process CPU per request, and
   whether the targets are met;
9. unless ``--no-spool``, runs the spool's spooling (broker paused) and draining runs and
   sets their requests/s against the normal path's (``bench/ingest_spool.py``).

Exit status: 0 when every check passed (the targets are reported, not enforced, unless
``--strict``), 1 when a check failed (a non-200 answer, an unacknowledged 200, a bad
bundle answer) or with ``--strict`` a target was missed, 2 when something needed is
missing (wrk, Kafka).

``--body FILE`` posts another body instead of the vendor's example (whose broken root
start tag sends every request through the ingress's XML recovery).

``--profile DIR`` runs the ingress under ``py-spy record`` (``pip install py-spy``) and
writes its samples to ``DIR`` (collapsed stacks and a flame graph): the figures of a
profiled run are slower than a plain run's and only good for finding hot spots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passpost_dev.ports import free_port
from passpost_dev.processes import stop

ROOT = Path(__file__).resolve().parent.parent
POST_LUA = ROOT / "bench" / "post.lua"
REPORT_LUA = ROOT / "bench" / "report.lua"  # done(): appended to every wrk script (wrk_script)
BARE_APP = ROOT / "bench" / "bare_app.py"
VENDOR_EXAMPLE = ROOT / "tests" / "data" / "vendor_example.xml"
# The vendor's example with its root start tag mended: the path of a postback that parses at once.
WELL_FORMED_EXAMPLE = ROOT / "bench" / "well_formed_example.xml"
POSTBACK_PATH = "/postbacks/passes"
WARMUP_SECONDS = 3

# Targets on the reference machine (2 cores), from issue 13.
TARGET_CPU_MS = 0.10  # process CPU per acknowledged request, on either body
TARGET_RATIO = 0.3
TARGET_P99_MS = 10.0
TARGET_RSS_MIB = 150.0
TARGET_BUNDLE_S = 1.0
TARGET_WORKERS_SCALING = 1.5  # two workers on two cores (issue 13)


class BenchError(Exception):
    """Something the benchmark needs is missing or broke; the message is one line."""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    status_200: int
    status_other: int
    errors: dict[str, int]

    @property
    def socket_errors(self) -> int:
        return sum(count for name, count in self.errors.items() if name != "status")


@dataclass
class Report:
    ingress: WrkResult | None = None
    bare: WrkResult | None = None
    ingress_rss_mib: float | None = None
    workers: WrkResult | None = None  # passpost serve --workers N, driven like the ingress
    ingress_cores: CoresBusy | None = None
    workers_cores: CoresBusy | None = None
    ingress_cpu_ms: float | None = None  # process CPU per request answered during the measured run
    well_formed: WrkResult | None = None  # the same server posted bench/well_formed_example.xml
    well_formed_cpu_ms: float | None = None
    bare_cpu_ms: float | None = None
    ingress_rss_after_wrk_mib: float | None = None
    bare_rss_mib: float | None = None
    events_on_topic: int | None = None
    server_200s: int | None = None
    events_total: int | None = None
    server_200s_total: int | None = None
    dead_letters: int | None = None
    bundle_times: list[float] = field(default_factory=list)
    bundle_ok: int = 0
    failures: list[str] = field(default_factory=list)
    spool: Any = None  # bench.ingest_spool.SpoolReport, with --spool


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError(
            "wrk is not installed; install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) "
            "or see https://github.com/wg/wrk"
        )
    return wrk


def passpost_command() -> list[str]:
    script = Path(sys.executable).parent / "passpost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "passpost"]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CoresBusy:
    """How many cores each party kept busy during a measured run (CPU seconds over wall seconds)."""

    server: float
    broker: float | None  # None: a configured broker, not a process of this run
    wrk: float
    machine: float  # every process's, this run's and others' (/proc/stat)

    def __str__(self) -> str:
        broker = "" if self.broker is None else f", the broker {self.broker:.2f}"
        return (f"the server {self.server:.2f}{broker}, wrk {self.wrk:.2f}; the whole machine {self.machine:.2f} "
                f"of {os.cpu_count()}")


def cores_busy(server_pids: list[int], kafka: Any, action: Callable[[], Any]) -> tuple[Any, CoresBusy]:
    """Run ``action`` and measure the cores that the server's processes, the local broker and wrk
    (the children this process waits for) kept busy meanwhile."""
    # getattr: a passpost installed before LocalKafka.pid existed can be measured too (before/after runs).
    broker_pid = None if kafka is None else getattr(kafka, "pid", None)

    def cpu() -> tuple[float, float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        # /proc/stat's first line: jiffies of all cores by state; idle and iowait are the idle ones.
        jiffies = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(jiffies[:8]) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
        return (sum(cpu_seconds(pid) for pid in server_pids),
                cpu_seconds(broker_pid) if broker_pid is not None else 0.0, children.ru_utime + children.ru_stime,
                busy)

    started, before = time.monotonic(), cpu()
    result = action()
    wall, after = time.monotonic() - started, cpu()
    server, broker, wrk, machine = ((end - start) / wall for start, end in zip(before, after))
    return result, CoresBusy(server, None if broker_pid is None else broker, wrk, machine)


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


# --------------------------------------------------------------------------- servers


class Server:
    """One server process: started, waited for, measured, stopped."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def passpost_serve(cls, name: str, env: dict[str, str], logdir: Path, *arguments: str,
                       wrap: Callable[[list[str]], list[str]] | None = None) -> Server:
        """``passpost serve`` on a free loopback port with ``arguments`` added (``wrap`` may put
        a profiler in front of the command)."""
        port = free_port()
        command = [*passpost_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *arguments]
        return cls(name, wrap(command) if wrap else command, port, {**env, "PASSPOST_PORT": str(port)}, logdir)

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "wb") as output:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, "/readyz")
                if status == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"{self.name} was not ready within {timeout:g} s: {self.log_tail()}")

    @property
    def server_pid(self) -> int:
        """The Python process serving: the one started, or its child under py-spy."""
        assert self.process is not None
        if Path(self.command[0]).name == "py-spy":
            children = child_pids(self.process.pid)
            if children:
                return children[0]
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # Under py-spy, SIGINT makes py-spy stop sampling and write its output; the
        # server (its child, same process group) gets the signal too and shuts down.
        stop(process, signal.SIGINT if Path(self.command[0]).name == "py-spy" else signal.SIGTERM, timeout)

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:]) or "(no output)"
        return "(no output)"


def fresh_topic_names() -> tuple[str, str]:
    """An events and a dead-letter topic name no earlier run used."""
    run_id = secrets.token_hex(4)
    return f"bench-{run_id}.pass-postbacks.v1", f"bench-{run_id}.pass-postbacks.dlq.v1"


def passpost_env(bootstrap: str, events_topic: str, dead_letter_topic: str, token: str) -> dict[str, str]:
    """The environment of the benchmark's passpost processes: the broker, fresh topics, the token; logs
    as the production overlay writes them (JSON, info: an access line per request, into the run's log
    directory); then the caller's own PASSPOST_* settings (linger, compression, log level...)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PASSPOST_")}
    env.update({"PASSPOST_LOG_FORMAT": "json", "PASSPOST_LOG_LEVEL": "info"})
    env.update({key: value for key, value in os.environ.items() if key.startswith("PASSPOST_")})
    env.update({
        "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PASSPOST_EVENTS_TOPIC": events_topic,
        "PASSPOST_DEAD_LETTER_TOPIC": dead_letter_topic,
        "PASSPOST_INGEST_TOKENS": token,
    })
    return env


def wrk_script(own: str, directory: Path, name: str) -> Path:
    """A wrk script of ``own`` Lua followed by bench/report.lua's done(), written into ``directory``."""
    script = directory / name
    script.write_text(own.rstrip("\n") + "\n\n" + REPORT_LUA.read_text())
    return script


def run_wrk(wrk: str, options: argparse.Namespace, port: int, script: Path, arguments: list[str],
            seconds: int) -> tuple[WrkResult, int]:
    """wrk against the ingress on ``port``: its BENCH_RESULT, and its BENCH_FAILURES count (0 if none)."""
    command = [
        wrk, f"-t{options.threads}", f"-c{options.connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(script), f"http://127.0.0.1:{port}{POSTBACK_PATH}", "--", *arguments,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    result, failures = None, 0
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = WrkResult(**json.loads(line.removeprefix("BENCH_RESULT ")))
        elif line.startswith("BENCH_FAILURES "):
            failures = int(line.split()[1])
    if result is None:
        raise BenchError(f"wrk printed no result (status {completed.returncode}): {completed.stderr.strip()[-300:]}")
    return result, failures


def add_wrk_options(parser: argparse.ArgumentParser, *, connections: int, connections_help: str) -> None:
    parser.add_argument("--connections", type=int, default=connections, help=connections_help)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")


def bench_main(parser: argparse.ArgumentParser, argv: list[str] | None, run: Callable[[argparse.Namespace], Any],
               print_report: Callable[[Any, argparse.Namespace], bool]) -> int:
    """Parse, run, report: status 2 when the benchmark could not run, 1 when a run failed or (--strict) a
    target was missed, else 0."""
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    options = parser.parse_args(argv)
    if options.connections < options.threads:
        parser.error("--connections must be at least --threads")
    try:
        report = run(options)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    met = print_report(report, options)
    if report.failures:
        return 1
    return 1 if options.strict and not met else 0


def scrape_200s(port: int) -> int:
    """The ingress's own count of postbacks answered 200, from /metrics."""
    _, text = http_get(port, "/metrics")
    total = 0
    for line in text.decode().splitlines():
        if line.startswith("passpost_http_requests_total{") and f'route="{POSTBACK_PATH}"' in line \
                and 'status="200"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def settle(port: int, quiet_seconds: float = 1.0, timeout: float = 15.0) -> int:
    """Wait until the ingress's 200 count stops moving (requests in flight when wrk stopped)."""
    deadline = time.monotonic() + timeout
    last, since = scrape_200s(port), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = scrape_200s(port)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            break
    return last


# --------------------------------------------------------------------------- Kafka


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    with kafka_process() as (bootstrap, _):
        yield bootstrap


@contextlib.contextmanager
def kafka_process() -> Iterator[tuple[str, Any]]:
    """The broker's address, and the LocalKafka it runs as (None for a configured one: it
    cannot be paused, so the spool runs are left out)."""
    configured = os.environ.get("PASSPOST_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        log(f"using the Kafka at {configured} (PASSPOST_KAFKA_BOOTSTRAP_SERVERS)")
        yield configured, None
        return
    from passpost_dev.kafka import LocalKafka, LocalKafkaError

    log("starting a local Kafka broker")
    kafka = LocalKafka()
    try:
        kafka.start()
    except LocalKafkaError as error:
        kafka.close()
        raise BenchError(f"could not start a local Kafka: {str(error).splitlines()[0]}") from None
    try:
        log(f"local Kafka at {kafka.bootstrap_servers}")
        yield kafka.bootstrap_servers, kafka
    finally:
        kafka.close()


def topic_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records on ``topic``: the sum of its partitions' end offsets (it started empty)."""

    async def count() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(count())


def create_topics(env: dict[str, str]) -> int:
    """Create this run's topics as ``passpost topics`` does; return their partition count."""
    from passpost import settings as settings_module
    from passpost.kafka import create_topics as create

    settings = settings_module.load(env)
    outcome = asyncio.run(create(settings))
    for topic, state in outcome.items():
        if state != "created":
            raise BenchError(f"topic {topic} already existed; the benchmark needs fresh topics")
    return settings.topic_partitions


# --------------------------------------------------------------------------- the bundle


def bundle_xml(items: int) -> bytes:
    notifications = "".join(
        "<NOTIFICATION>"
        f"<STATUSCODE>{'N801' if index % 10 else 'N802'}</STATUSCODE>"
        "<REFERENCEDBY>Email</REFERENCEDBY>"
        f"<REFERENCEVALUE>user{index}@example.com</REFERENCEVALUE>"
        f"<CUSTOMPASSID>ID-{100000 + index}</CUSTOMPASSID>"
        f"<PASSDATAID>{40000 + index}</PASSDATAID>"
        f"<SERIALNUMBER>5294CE37878AE-112613-{index:06d}</SERIALNUMBER>"
        f"<TIMESTAMP>2013-11-26T11:{index // 60 % 60:02d}:{index % 60:02d}-05:00</TIMESTAMP>"
        "</NOTIFICATION>"
        for index in range(items)
    )
    return f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>{notifications}</POSTBACK>".encode()


def post_bundles(port: int, token: str, items: int, posts: int, report: Report) -> None:
    body = bundle_xml(items)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/xml"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        for _ in range(posts):
            started = time.perf_counter()
            connection.request("POST", POSTBACK_PATH, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            report.bundle_times.append(time.perf_counter() - started)
            events = json.loads(answer).get("events") if response.status == 200 else None
            if response.status == 200 and events == items:
                report.bundle_ok += 1
            else:
                report.failures.append(f"bundle answered {response.status} {answer[:200]!r}")
    finally:
        connection.close()


# --------------------------------------------------------------------------- the run


def run(options: argparse.Namespace) -> Report:
    wrk = require_wrk()
    report = Report()
    token = secrets.token_urlsafe(24)
    events_topic, dead_letter_topic = fresh_topic_names()
    logdir = Path(tempfile.mkdtemp(prefix="passpost-bench-"))
    script = wrk_script(POST_LUA.read_text(), logdir, "post.lua")
    wrk_arguments = [str(options.body), token]
    log(f"server logs in {logdir}")

    with kafka_process() as (bootstrap, kafka):
        env = passpost_env(bootstrap, events_topic, dead_letter_topic, token)
        partitions = create_topics(env)
        before = topic_records(bootstrap, events_topic, partitions)
        if before != 0:
            raise BenchError(f"the events topic {events_topic} holds {before} records before the run")
        log(f"topics {events_topic} and {dead_letter_topic} created, empty")

        # ---- the ingress
        def under_py_spy(command: list[str]) -> list[str]:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            options.profile.mkdir(parents=True, exist_ok=True)
            # Blocking sampling (py-spy's default) keeps stacks whole; native frames show C extensions
            # and system calls; 200 Hz keeps its cost modest.
            return [py_spy, "record", "--rate", "200", "--native", "--format", "raw",
                    "-o", str(options.profile / "ingress.collapsed"), "--", *command]

        ingress = Server.passpost_serve("ingress", env, logdir, wrap=under_py_spy if options.profile else None)
        port = ingress.port
        log(f"starting passpost serve on port {port}")
        ingress.start()
        try:
            log(f"warming the ingress up for {WARMUP_SECONDS} s")
            run_wrk(wrk, options, port, script, wrk_arguments, WARMUP_SECONDS)
            warm_200s = settle(port)
            log(f"driving the ingress for {options.duration} s at {options.connections} connections")
            cpu_before = cpu_seconds(ingress.server_pid)
            (report.ingress, _), report.ingress_cores = cores_busy(
                [ingress.server_pid], kafka,
                lambda: run_wrk(wrk, options, port, script, wrk_arguments, options.duration))
            ingress_cpu = cpu_seconds(ingress.server_pid) - cpu_before
            report.ingress_rss_after_wrk_mib = peak_rss_mib(ingress.server_pid)
            # Totals since the topic was created (warm-up included): these two must be equal.
            report.server_200s_total = settle(port)
            report.events_total = topic_records(bootstrap, events_topic, partitions)
            # This run's share, to set against what wrk counted.
            report.server_200s = report.server_200s_total - warm_200s
            report.ingress_cpu_ms = 1000 * ingress_cpu / max(report.server_200s, 1)
            report.events_on_topic = report.events_total - warm_200s
            if options.well_formed_body is not None:
                log(f"driving the ingress with {options.well_formed_body.name} for {options.duration} s")
                arguments = [str(options.well_formed_body), token]
                cpu_before, before_200s = cpu_seconds(ingress.server_pid), report.server_200s_total
                report.well_formed, _ = run_wrk(wrk, options, port, script, arguments, options.duration)
                report.well_formed_cpu_ms = (1000 * (cpu_seconds(ingress.server_pid) - cpu_before)
                                             / max(settle(port) - before_200s, 1))
                if report.well_formed.status_other or report.well_formed.socket_errors:
                    report.failures.append(f"the ingress answered {report.well_formed.status_other} well-formed "
                                           f"postbacks with a status other than 200 ({report.well_formed.errors})")
                report.server_200s_total = settle(port)
                report.events_total = topic_records(bootstrap, events_topic, partitions)
            log(f"posting a bundle of {options.bundle_items} items {options.bundle_posts} times")
            before_bundles = topic_records(bootstrap, events_topic, partitions)
            post_bundles(port, token, options.bundle_items, options.bundle_posts, report)
            bundle_events = topic_records(bootstrap, events_topic, partitions) - before_bundles
            if bundle_events != report.bundle_ok * options.bundle_items:
                report.failures.append(
                    f"bundles: {report.bundle_ok} answered 200 with {options.bundle_items} events, "
                    f"but {bundle_events} events reached the topic"
                )
            report.ingress_rss_mib = peak_rss_mib(ingress.server_pid)
            report.dead_letters = topic_records(bootstrap, dead_letter_topic, partitions)
        finally:
            ingress.stop()

        # ---- the same ingress as N worker processes on one port (passpost serve --workers N)
        if options.workers > 1:
            several = Server.passpost_serve("workers", env, logdir, "--workers", str(options.workers))
            port = several.port
            log(f"starting passpost serve --workers {options.workers} on port {port}")
            several.start()
            try:
                run_wrk(wrk, options, port, script, wrk_arguments, WARMUP_SECONDS)
                log(f"driving {options.workers} workers for {options.duration} s at {options.connections} connections")
                pids = [several.server_pid, *child_pids(several.server_pid)]
                (report.workers, _), report.workers_cores = cores_busy(
                    pids, kafka, lambda: run_wrk(wrk, options, port, script, wrk_arguments, options.duration))
            finally:
                several.stop()

        # ---- the bare endpoint, same uvicorn settings, driven the same way, with the
        # broker still up (idle) so that the machine is in the same state
        port = free_port()
        bare = Server("bare", [sys.executable, str(BARE_APP), "--port", str(port)], port, env, logdir)
        log(f"starting the bare Starlette endpoint on port {port}")
        bare.start()
        try:
            log(f"warming the bare endpoint up for {WARMUP_SECONDS} s")
            run_wrk(wrk, options, port, script, wrk_arguments, WARMUP_SECONDS)
            log(f"driving the bare endpoint for {options.duration} s at {options.connections} connections")
            cpu_before = cpu_seconds(bare.server_pid)
            report.bare, _ = run_wrk(wrk, options, port, script, wrk_arguments, options.duration)
            report.bare_cpu_ms = 1000 * (cpu_seconds(bare.server_pid) - cpu_before) / max(report.bare.requests, 1)
            report.bare_rss_mib = peak_rss_mib(bare.server_pid)
        finally:
            bare.stop()

        # ---- the spool (issue 11): spooling with the broker paused, then draining
        if options.spool and kafka is None:
            log("spool runs left out: a configured Kafka cannot be paused")
        elif options.spool:
            from bench.ingest_spool import run_spool

            report.spool = run_spool(wrk, options, kafka, env, logdir, token, script, wrk_arguments)
            report.failures += [f"spool: {failure}" for failure in report.spool.failures]

    check(report)
    return report


def check(report: Report) -> None:
    ingress, bare = report.ingress, report.bare
    assert ingress is not None and bare is not None
    if ingress.status_other:
        report.failures.append(f"the ingress answered {ingress.status_other} requests with a status other than 200")
    if ingress.socket_errors:
        report.failures.append(f"wrk saw socket errors against the ingress: {ingress.errors}")
    if report.workers is not None and (report.workers.status_other or report.workers.socket_errors):
        report.failures.append(f"the workers answered {report.workers.status_other} requests with a status other "
                               f"than 200 (socket errors {report.workers.errors})")
    if bare.status_other or bare.socket_errors:
        report.failures.append(f"the bare endpoint failed: {bare.status_other} non-200, errors {bare.errors}")
    if report.events_total != report.server_200s_total:
        report.failures.append(
            f"the ingress answered 200 {report.server_200s_total} times (warm-up included) "
            f"but {report.events_total} events are on the topic"
        )
    if report.events_on_topic is not None and report.events_on_topic < ingress.status_200:
        report.failures.append(
            f"wrk counted {ingress.status_200} answers 200 but only {report.events_on_topic} events are on the topic"
        )
    if report.dead_letters:
        report.failures.append(f"{report.dead_letters} dead letters were written")


def print_report(report: Report, options: argparse.Namespace) -> bool:
    ingress, bare = report.ingress, report.bare
    assert ingress is not None and bare is not None
    ratio = ingress.rps / bare.rps if bare.rps else 0.0
    print()
    print(f"passpost ingress benchmark: wrk -t{options.threads} -c{options.connections} -d{options.duration}s, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
          + (" (PROFILED under py-spy: figures not comparable)" if options.profile else ""))
    print(f"body: {options.body} ({options.body.stat().st_size} bytes, raw, Bearer token); "
          f"load average at the end: {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'':22}{'requests/s':>12}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}{'requests':>10}"
          f"{'non-200':>9}")
    rows = [("ingress (passpost)", ingress), ("bare Starlette", bare)]
    if report.well_formed is not None:
        rows.insert(1, ("ingress, well-formed", report.well_formed))
    for name, result in rows:
        print(f"{name:22}{result.rps:>12.0f}{result.p50_ms:>10.2f}{result.p90_ms:>10.2f}{result.p99_ms:>10.2f}"
              f"{result.max_ms:>10.1f}{result.requests:>10}{result.status_other:>9}")
    print()
    print(f"ratio ingress/bare requests/s: {ratio:.2f}")
    print(f"process CPU per request: ingress {report.ingress_cpu_ms:.3f} ms"
          + (f" (well-formed body {report.well_formed_cpu_ms:.3f} ms)" if report.well_formed_cpu_ms else "")
          + f", bare {report.bare_cpu_ms:.3f} ms")
    if report.ingress_cores is not None:
        print(f"cores busy while the ingress ran (vendor's example): {report.ingress_cores}")
    if report.workers is not None:
        print(f"passpost serve --workers {options.workers}: {report.workers.rps:.0f} requests/s "
              f"({report.workers.rps / ingress.rps:.2f} x one process), p99 {report.workers.p99_ms:.1f} ms, "
              f"non-200 {report.workers.status_other}; cores busy: {report.workers_cores}")
    print(f"ingress answers 200 seen by wrk: {ingress.status_200}; answered 200 by the server (also those in "
          f"flight when wrk stopped): {report.server_200s}; events on the topic: {report.events_on_topic}")
    print(f"since the topic was created (warm-up included): answered 200 {report.server_200s_total}, "
          f"events on the topic {report.events_total}")
    print(f"dead letters: {report.dead_letters}; wrk socket errors: {ingress.errors}")
    print(f"ingress peak RSS (VmHWM): {report.ingress_rss_mib:.1f} MiB "
          f"(after the wrk run: {report.ingress_rss_after_wrk_mib:.1f} MiB); "
          f"bare endpoint: {report.bare_rss_mib:.1f} MiB")
    if report.spool is not None:
        from bench.ingest_spool import print_spool

        print_spool(report.spool, ingress)
    times = sorted(report.bundle_times)
    if times:
        print(f"bundle of {options.bundle_items} items x {len(times)} posts: "
              f"p50 {statistics.median(times) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms, "
              f"answered 200 with {options.bundle_items} events: {report.bundle_ok}/{len(times)}")
    cpu_ms = max(report.ingress_cpu_ms or 1e9, report.well_formed_cpu_ms or 0.0)
    targets = [
        (f"ingress <= {TARGET_CPU_MS:g} ms of process CPU per acknowledged request", cpu_ms <= TARGET_CPU_MS,
         f"{cpu_ms:.3f} ms"),
        (f"ingress >= {TARGET_RATIO} x bare requests/s", ratio >= TARGET_RATIO, f"{ratio:.2f}"),
        (f"ingress p99 < {TARGET_P99_MS:g} ms", ingress.p99_ms < TARGET_P99_MS, f"{ingress.p99_ms:.1f} ms"),
        (f"ingress peak RSS < {TARGET_RSS_MIB:g} MiB", (report.ingress_rss_mib or 1e9) < TARGET_RSS_MIB,
         f"{report.ingress_rss_mib:.1f} MiB"),
        (f"{options.bundle_items}-item bundle < {TARGET_BUNDLE_S:g} s", bool(times) and times[-1] < TARGET_BUNDLE_S,
         f"max {times[-1] * 1000:.0f} ms" if times else "not run"),
        ("every 200 acknowledged by Kafka, no non-200", not report.failures, "yes" if not report.failures else "NO"),
    ]
    if report.workers is not None:
        scaling = report.workers.rps / ingress.rps
        targets.append((f"{options.workers} workers >= {TARGET_WORKERS_SCALING} x one process's requests/s",
                        scaling >= TARGET_WORKERS_SCALING, f"{scaling:.2f}"))
    print()
    for name, met, value in targets:
        print(f"  {'met    ' if met else 'NOT MET'}  {name}: {value}")
    for failure in report.failures:
        print(f"  FAILED   {failure}")
    return all(met for _, met, _ in targets)


def print_hot_spots(collapsed: Path, top: int = 15) -> None:
    """The functions the ingress spent its samples in (self time), from py-spy's collapsed stacks."""
    if not collapsed.exists():
        print(f"\npy-spy wrote no samples to {collapsed}")
        return
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    print(f"\npy-spy: {total} samples in {collapsed}; top {top} by self time:")
    for leaf, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        print(f"  {100 * count / total:5.1f}%  {leaf}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark passpost serve against a bare Starlette endpoint.")
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per server (default 20)")
    add_wrk_options(parser, connections=32, connections_help="wrk connections (default 32)")
    parser.add_argument("--bundle-items", type=int, default=300, help="NOTIFICATION items per bundle (default 300)")
    parser.add_argument("--bundle-posts", type=int, default=20, help="bundles posted one after the other (default 20)")
    parser.add_argument("--body", type=Path, default=VENDOR_EXAMPLE,
                        help="request body posted by wrk (default: the vendor's example as printed, "
                             "which takes the ingress's XML recovery path)")
    parser.add_argument("--well-formed-body", type=lambda value: Path(value) if value else None,
                        default=WELL_FORMED_EXAMPLE,
                        help="a second measured run posts this body (default: the vendor's example, its root "
                             "start tag mended); --well-formed-body '' leaves it out")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the ingress under py-spy record and write its samples to DIR")
    parser.add_argument("--workers", type=int, default=2,
                        help="also drive `passpost serve --workers N` (default 2; 1 leaves it out)")
    parser.add_argument("--no-spool", dest="spool", action="store_false",
                        help="leave out the spool's runs (PASSPOST_SPOOL_DIR: broker paused, then draining)")

    from bench.ingest_tracing import add_tracing_options, print_tracing_report, run_tracing

    add_tracing_options(parser)

    def report_and_profile(report: Report, options: argparse.Namespace) -> bool:
        all_met = print_report(report, options)
        if options.profile:
            print_hot_spots(options.profile / "ingress.collapsed")
        return all_met

    def run_mode(options: argparse.Namespace) -> Any:
        return run_tracing(options) if options.tracing else run(options)

    def report_mode(report: Any, options: argparse.Namespace) -> bool:
        return print_tracing_report(report, options) if options.tracing else report_and_profile(report, options)

    return bench_main(parser, argv, run_mode, report_mode)


if __name__ == "__main__":
    sys.exit(main())
