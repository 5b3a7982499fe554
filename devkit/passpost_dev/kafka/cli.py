"""``python -m passpost_dev.kafka``: ``fetch`` caches Kafka's jars (``make kafka-jars``), ``run`` keeps a broker up."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from passpost_dev.kafka import storage
from passpost_dev.kafka.broker import LocalKafka
from passpost_dev.kafka.cluster import LocalKafkaCluster
from passpost_dev.kafka.config import SECURE_LISTENERS
from passpost_dev.kafka.errors import LocalKafkaError, java_executable
from passpost_dev.kafka.jars import KAFKA_VERSION, ensure_kafka_jars, kafka_jars_cached
from passpost_dev.kafka.jvm import class_archive


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m passpost_dev.kafka", description="A local Kafka broker for development."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download Kafka's jars into the cache and print their folder")
    fetch.add_argument("--verbose", "-v", action="store_true", help="show Maven's output")
    fetch.add_argument(
        "--jars-only", action="store_true",
        help="skip the trial start that prepares the class archive and storage template",
    )
    run = commands.add_parser("run", help="start a broker and keep it up until Ctrl-C")
    run.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: a free one)")
    run.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temp dir)")
    run.add_argument("--secure", action="store_true",
                     help="add SASL_PLAINTEXT, SSL and SASL_SSL listeners and print how to reach them")
    run.add_argument("--cluster", action="store_true",
                     help="three nodes (RF 3, min ISR 2) as production runs, to try a broker's death by hand")
    options = parser.parse_args(argv)
    try:
        if options.command == "fetch":
            return fetch_jars(verbose=options.verbose, jars_only=options.jars_only)
        if options.cluster:
            if options.port is not None or options.secure:
                parser.error("--cluster takes neither --port nor --secure")
            return run_cluster(options.workdir)
        return run_broker(options.port, options.workdir, secure=options.secure)
    except LocalKafkaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def fetch_jars(*, verbose: bool = False, jars_only: bool = False) -> int:
    """Cache the jars and, unless ``jars_only``, what makes a broker's start fast (one trial start)."""
    started = time.monotonic()
    if not kafka_jars_cached():
        print(f"Downloading Kafka {KAFKA_VERSION}'s jars from Maven Central (once; they are cached)...", flush=True)
    libs = ensure_kafka_jars(quiet=not verbose)
    print(f"Kafka {KAFKA_VERSION} jars in {libs} ({time.monotonic() - started:.1f} s)")
    prepared = storage.template_dir(libs).is_dir() and class_archive(libs, java_executable()).exists()
    if not (jars_only or prepared):
        # One clean start and stop leaves the storage template and the class archive in
        # the cache, so the first broker of a CI run starts as fast as the later ones.
        started = time.monotonic()
        with LocalKafka():
            pass
        print(f"trial broker started and stopped ({time.monotonic() - started:.1f} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_broker(port: int | None, workdir: Path | None, *, secure: bool = False) -> int:
    """A broker up until Ctrl-C or SIGTERM (exit 0), or until it exits by itself (exit 1)."""
    # SIGTERM should clean up like Ctrl-C does rather than orphan the JVM.
    signal.signal(signal.SIGTERM, _interrupt)
    kafka = LocalKafka(workdir, port=port, listeners=SECURE_LISTENERS if secure else ())
    try:
        started = time.monotonic()
        kafka.start()
        print(f"Kafka {KAFKA_VERSION} serving at {kafka.bootstrap_servers} "
              f"(started in {time.monotonic() - started:.1f} s; log {kafka.log_path})", flush=True)
        for name in kafka.listeners:
            variables = kafka.client_env(name, client_certificate=name == "SSL")
            print(f"{name} at {kafka.bootstrap_servers_for(name)}:", " ".join(
                f"{key}={value}" for key, value in variables.items()), flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while kafka.running:
            time.sleep(0.5)
        print(f"the broker exited; log {kafka.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        kafka.close()


def run_cluster(workdir: Path | None) -> int:
    """Three nodes up until Ctrl-C or SIGTERM (exit 0); a node killed by hand is not restarted."""
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = LocalKafkaCluster(workdir)
    try:
        started = time.monotonic()
        cluster.start()
        print(f"Kafka {KAFKA_VERSION} cluster serving at {cluster.bootstrap_servers} "
              f"(started in {time.monotonic() - started:.1f} s; active controller: node "
              f"{cluster.active_controller()})", flush=True)
        for node_id, node in cluster.nodes.items():
            print(f"node {node_id}: {node.bootstrap_servers}, pid {node.pid}, log {node.log_path}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while cluster.running_nodes():
            time.sleep(0.5)
        print(f"every node exited; logs in {cluster.workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.close()
