"""The consumer benchmark: `passpost consume analytics` draining a backlog into DuckDB and PostgreSQL.

    python -m bench.consume [--events 1000000] [--partitions 6] [--skip-postgres] [--skip-duckdb]
                            [--lakehouse] [--passpost [LABEL=]PATH ...] [--rounds N] [--tracing]

``--lakehouse`` adds `passpost consume lakehouse` (needs passpost[lakehouse]) draining the same backlog into
an Iceberg table: a SQL catalog on the benchmark's PostgreSQL (SQLite with ``--skip-postgres``) and a file
warehouse, committing every 100,000 events and at most 1 s after the last batch; its rate runs until the
table's snapshot offsets cover the backlog (the events the consumer was handed are not yet in the table).

What one run does (figures in BENCHMARKS.md):

1. starts a local Kafka broker (``passpost_dev.kafka``), or uses the one named by
   ``PASSPOST_KAFKA_BOOTSTRAP_SERVERS``, creates a fresh events topic and fills it with
   ``--events`` events encoded by the project's codec (``passpost.schemas.codec.encode``),
   keyed as the ingress keys them;
2. baseline: a bare aiokafka loop, in this process, that fetches (``getmany``) and decodes
   every record and does nothing else;
3. runs ``passpost consume analytics`` as its own process on a fresh DuckDB file, with
   default settings, and measures events/s from its first written batch until
   ``passpost_consumer_events_total`` reaches the backlog, then its peak RSS (VmHWM) and its CPU
   time (all threads, from ``/proc``) per event over the same span;
4. the same on PostgreSQL (a server started like the tests' fixture), unless skipped;
5. prints a Markdown table, and checks each store holds exactly ``--events`` rows.

``--passpost [LABEL=]PATH`` names the ``passpost`` executable run as the consumer (default: this
installation's, ``python -m passpost``), so that another installation, say an older commit installed
in its own virtual environment, is measured by this same bench on the same backlog. Given more than
once, each executable drains the backlog in turn on every store, and ``--rounds N`` repeats the whole
(bare loop included) N times, in the order given in odd rounds and reversed in even ones (whichever
drains second was measured slower than the very same installation draining first):
``--passpost old=/tmp/old/bin/passpost --passpost new=.venv/bin/passpost --rounds 4`` measures old and
new alternated side by side on one broker. Every drain uses a fresh consumer group and a fresh store,
dropped once counted; the table has a row per bare loop and per drain, then the medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from passpost import settings as settings_module
from passpost.consumers.analytics.store import open_store
from passpost.kafka import create_topics
from passpost.schemas.codec import decode, encode
from passpost.schemas.event import PassPostback, classify
from passpost_dev.kafka import LocalKafka
from passpost_dev.ports import free_port
from passpost_dev.processes import stop
from tests.postgres_fixtures import PostgresServer

ROOT = Path(__file__).resolve().parent.parent

CODES = ("N801", "N801", "N801", "N802", "N803", "N811", "X999")


def event_id_of(n: int) -> str:
    """Random-looking, as the ingress's (32 hex digits of a SHA-256): sequential ids made DuckDB's key index
    far smaller than production's and hid that it outgrew the memory limit (BENCHMARKS.md, issue 22)."""
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()[:32]


def make_event(n: int, start: datetime) -> PassPostback:
    code = CODES[n % len(CODES)]
    return PassPostback(
        event_id=event_id_of(n), origin="GENERATE_PASS", status_code=code, outcome=classify(code),
        referenced_by="Email", reference_value=f"user{n}@example.com", custom_pass_id=f"C{n % 5000}",
        pass_data_id=f"PD{n % 977}", serial_number=f"SN{n}", generated_at=start + timedelta(seconds=n),
        timestamp_raw="2026-11-26T11:37:11-05:00", received_at=start + timedelta(seconds=n, milliseconds=250),
        extra={"PASSDATA/BARCODEVALUE": str(n)} if n % 10 == 0 else {})


async def fill(bootstrap: str, topic: str, events: int, traced: bool = False) -> float:
    """``events`` on ``topic``; ``traced``: each with a sampled ``traceparent`` of its own, as the ingress
    writes them with tracing on (the consumers' batch spans then link up to 128 of them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, compression_type="lz4",
                                max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    start = datetime(2026, 11, 26, tzinfo=UTC)
    try:
        pending = []
        for n in range(events):
            event = make_event(n, start)
            headers = None
            if traced:
                headers = [("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode())]
            pending.append(await producer.send(topic, encode(event), key=event.kafka_key(), headers=headers))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare_loop(bootstrap: str, topic: str, events: int) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=8 * 1024 * 1024,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    count, started, cpu = 0, None, 0.0
    try:
        while count < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if started is None:
                    started, cpu, first = time.perf_counter(), time.process_time(), count
                for record in records:
                    decode(record.value)
                count += sum(1 for _ in records)
        elapsed, cpu = time.perf_counter() - (started or 0), time.process_time() - cpu
    finally:
        await consumer.stop()
    return count / elapsed, cpu / (count - first)


def metric(port: int, name: str, consumer: str = "analytics") -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1.0
    match = re.search(rf'^{name}{{consumer="{consumer}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Lakehouse:
    """The Iceberg table a lakehouse drain writes: its catalog URI stands for the store's DSN."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def env(self, catalog_uri: str) -> dict[str, str]:
        return {"PASSPOST_ICEBERG_CATALOG_URI": catalog_uri,
                "PASSPOST_ICEBERG_WAREHOUSE": f"file://{self.work}/warehouse-{abs(hash(catalog_uri))}",
                "PASSPOST_ANALYTICS_HASH_KEY": "bench-key", "PASSPOST_ICEBERG_COMMIT_SECONDS": "1"}

    def rows(self, catalog_uri: str) -> int:
        """Events the table's snapshot offsets cover (the runtime's records: every one an event here)."""
        from passpost.consumers.lakehouse import table as iceberg

        settings = settings_module.defaults().replace(
            iceberg_catalog_uri=catalog_uri, iceberg_warehouse=self.env(catalog_uri)["PASSPOST_ICEBERG_WAREHOUSE"])
        try:
            table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
        except Exception:  # noqa: BLE001 - not created yet
            return 0
        return sum(iceberg.all_offsets(table)[0].values())

    def count(self, catalog_uri: str) -> int:
        from passpost.consumers.lakehouse import table as iceberg

        settings = settings_module.defaults().replace(
            iceberg_catalog_uri=catalog_uri, iceberg_warehouse=self.env(catalog_uri)["PASSPOST_ICEBERG_WAREHOUSE"])
        table = iceberg.load_catalog(settings).load_table(settings.iceberg_table)
        return int(table.scan(selected_fields=("event_id",)).to_arrow().num_rows)


def drain(command: list[str], bootstrap: str, topic: str, dsn: str, events: int,
          log: Path, extra_env: dict[str, str] | None = None,
          lakehouse: Lakehouse | None = None) -> tuple[float, float, float]:
    port = free_port()
    consumer = "analytics" if lakehouse is None else "lakehouse"
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("OTEL_")},
           "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PASSPOST_EVENTS_TOPIC": topic,
           "PASSPOST_CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}", "PASSPOST_ANALYTICS_DSN": dsn,
           "PASSPOST_CONSUMER_PORT": str(port), "PASSPOST_LOG_LEVEL": "warning",
           **(lakehouse.env(dsn) if lakehouse is not None else {}), **(extra_env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, "consume", consumer], env=env, stdout=sink, stderr=sink)
    try:
        started = None
        while (done := metric(port, "passpost_consumer_events_total", consumer)) < events:
            if process.poll() is not None:
                raise SystemExit(f"consumer exited:\n{log.read_text()}")
            if started is None and done > 0:
                started, first, cpu = time.perf_counter(), done, cpu_seconds(process.pid)
            # Each /metrics answer costs the consumer's event loop a few ms (py-spy: 7.7% of it when asked
            # every 50 ms): ask twice a second, and every 50 ms only before the first batch and near the end,
            # which the rate needs.
            time.sleep(0.05 if done <= 0 or done > 0.9 * events else 0.5)
        if started is None:
            raise SystemExit("the consumer drained the backlog before its first batch was seen: more --events")
        while lakehouse is not None and lakehouse.rows(dsn) < events:  # handed over, not yet committed
            if process.poll() is not None:
                raise SystemExit(f"consumer exited:\n{log.read_text()}")
            time.sleep(0.1)
        elapsed = time.perf_counter() - (started or 0)
        cpu = cpu_seconds(process.pid) - cpu
        rss = peak_rss_mib(process.pid)
    finally:
        stop(process, timeout=60)
    if lakehouse is not None:
        rows = lakehouse.count(dsn)
        assert rows == events, f"the Iceberg table: {rows} rows, expected {events}"
        return (events - first) / elapsed, rss, cpu / (events - first)
    store = open_store(dsn)
    try:
        assert store.count() == events, f"{dsn}: {store.count()} rows, expected {events}"
    finally:
        store.close()
    return (events - first) / elapsed, rss, cpu / (events - first)


def drop_database(server_dsn: str, dsn: str) -> None:
    """Drop a drained database, with the dirty pages it still has in the server's buffers."""
    import psycopg

    with psycopg.connect(server_dsn, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {dsn.rpartition('/')[2]} WITH (FORCE)")


def passpost_option(value: str) -> tuple[str, list[str]]:
    """``[LABEL=]PATH``: a label for the table and the ``passpost`` executable to run."""
    label, _, path = value.rpartition("=")
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"{path} is not an executable file")
    return label or path, [str(Path(path).absolute())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--lakehouse", action="store_true",
                        help="also `passpost consume lakehouse` into an Iceberg table (needs passpost[lakehouse])")
    parser.add_argument("--passpost", type=passpost_option, action="append", metavar="[LABEL=]PATH",
                        help="the passpost executable run as the consumer (default: this installation's); "
                             "repeat it to measure several installations in turn")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times, alternated")
    parser.add_argument("--tracing", action="store_true",
                        help="drain with tracing off and on (every batch sampled, spans exported to a local Jaeger), "
                             "side by side; the backlog's records carry a traceparent each (issue 19)")
    args = parser.parse_args()
    consumers: list[tuple[str, list[str], dict[str, str]]] = [
        (label, command, {}) for label, command in
        args.passpost or [("`passpost consume analytics`", [sys.executable, "-m", "passpost"])]]
    rows: list[tuple[str, float, float | None, float, float]] = []  # name, events/s, RSS, CPU, bare events/s
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="passpost-bench-")))
        bootstrap = os.environ.get("PASSPOST_KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            bootstrap = stack.enter_context(LocalKafka(work / "kafka")).bootstrap_servers
        topic = f"bench-events-{uuid.uuid4().hex[:8]}"
        settings = settings_module.defaults().replace(kafka_bootstrap_servers=bootstrap,
                                                      topic_partitions=args.partitions)
        asyncio.run(create_topics(settings, [topic]))
        if args.tracing:
            from passpost_dev.jaeger import LocalJaeger

            jaeger = stack.enter_context(LocalJaeger(home=work / "jaeger"))
            traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
            consumers = [(f"{label}, tracing {state}", command, env)
                         for label, command, _ in consumers for state, env in (("off", {}), ("on", traced))]
        seconds = asyncio.run(fill(bootstrap, topic, args.events, traced=args.tracing))
        print(f"filled {topic} with {args.events} events in {seconds:.1f} s", flush=True)
        server = None
        if not args.skip_postgres:
            server = PostgresServer()
            server.start()
            stack.callback(server.cleanup)

        stores: list[tuple[str, Callable[[], str], Callable[[str], None]]] = []
        lakehouse = Lakehouse(work) if args.lakehouse else None
        if not args.skip_duckdb:
            stores.append(("DuckDB", lambda: f"duckdb:///{work}/analytics-{uuid.uuid4().hex[:8]}.duckdb",
                           lambda dsn: Path(dsn.removeprefix("duckdb:///")).unlink()))
        if server is not None:
            stores.append(("PostgreSQL", server.create_database, lambda dsn: drop_database(server.dsn, dsn)))
        if lakehouse is not None:
            # The catalog's tables in a database of their own (SQLite without the server); the warehouse in work.
            stores.append(("Iceberg", server.create_database if server is not None else
                           lambda: f"sqlite:///{work}/catalog-{uuid.uuid4().hex[:8]}.db", lambda dsn: None))
        for round_ in range(1, args.rounds + 1):
            suffix = f" (round {round_})" if args.rounds > 1 else ""
            bare, cpu = asyncio.run(bare_loop(bootstrap, topic, args.events))
            rows.append((f"bare aiokafka getmany + decode{suffix}", bare, None, cpu, bare))
            print(f"bare loop{suffix}: {bare:,.0f} events/s, {cpu * 1e6:.1f} us CPU an event", flush=True)
            # Every other round in the reverse order: run second, the very same installation drained up to 16%
            # slower than run first in 3 of 4 rounds (PostgreSQL, BENCHMARKS.md, issue 18).
            for store, new_dsn, remove in stores:
                for number, (label, command, extra_env) in enumerate(consumers if round_ % 2 else consumers[::-1]):
                    dsn = new_dsn()
                    rate, peak, cpu = drain(command, bootstrap, topic, dsn, args.events,
                                            work / f"{store.lower()}-{round_}-{number}.log", extra_env,
                                            lakehouse if store == "Iceberg" else None)
                    remove(dsn)
                    if store == "Iceberg":
                        label = label.replace("consume analytics", "consume lakehouse")
                    rows.append((f"{label}, {store}{suffix}", rate, peak, cpu, bare))
                    print(f"{label}, {store}{suffix}: {rate:,.0f} events/s ({rate / bare:.2f} of the bare loop), "
                          f"peak RSS {peak:.0f} MiB, {cpu * 1e6:.1f} us CPU an event", flush=True)

    print(f"\n| {args.events:,} events, {args.partitions} partitions | events/s | of the bare loop | peak RSS "
          "| CPU an event (consumer process) |")
    print("| --- | --- | --- | --- | --- |")
    for name, rate, rss, cpu, bare in rows:
        print(f"| {name} | {rate:,.0f} | {rate / bare:.2f} | {'' if rss is None else f'{rss:.0f} MiB'} "
              f"| {cpu * 1e6:.1f} us |")
    if args.rounds > 1:
        print(f"\nMedians of {args.rounds} rounds:\n\n| | of the bare loop | CPU an event | peak RSS |\n"
              "| --- | --- | --- | --- |")
        for name in dict.fromkeys(row[0].rpartition(" (round ")[0] for row in rows):
            mine = [row for row in rows if row[0].rpartition(" (round ")[0] == name]
            peaks = [row[2] for row in mine if row[2] is not None]
            print(f"| {name} | {statistics.median(row[1] / row[4] for row in mine):.2f} "
                  f"| {statistics.median(row[3] for row in mine) * 1e6:.1f} us "
                  f"| {f'{statistics.median(peaks):.0f} MiB' if peaks else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
