"""Production's shape under load: a live `passpost serve`, `passpost consume analytics` and `passpost consume
alerts` on a three-node cluster (RF 3, min ISR 2), while a partition leader is SIGKILLed and restarted on its
kept data, then the active controller likewise; without the spool and with it.

What must hold: every postback answered 200 is on the topic exactly once, in the order each sender sent
them, in the analytics store (DuckDB) exactly once and counted once by the alerts; with the spool every
answer is 200; the consumers keep running through their coordinator's death (if the dead node was it);
every process exits 0 on SIGTERM; and the logs stay readable: a broker's death and return are a few lines
at WARNING or above per process, not aiokafka's hundreds.
"""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import fastavro
import httpx
import pytest

from passpost import settings as settings_module
from passpost.consumers.analytics.store import open_store
from passpost_dev.kafka import LocalKafkaCluster
from tests.kafka_helpers import create_topics, read_all
from tests.live import live_ingress
from tests.test_alerts_consumer import alerts_process
from tests.test_alerts_sinks import Receiver, receiver  # noqa: F401 (a fixture)
from tests.test_analytics_live import live_consumer
from tests.test_fault import SCHEMA, TOKEN, Answer, keep_posting
from tests.test_spool import wait_for

pytestmark = pytest.mark.kafka

TOPIC, DLQ = "pass-postbacks.v1", "pass-postbacks.dlq.v1"
# A log line at WARNING or above, as the text format writes it (a traceback's lines are not counted).
LOUD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (WARNING|ERROR|CRITICAL) ")
# Per process, for one death and return of a broker: lost and back (2), a coordinator lost and back
# (2), a 503 episode or a producer replaced (2). aiokafka alone made hundreds before.
LOUD_LINES_PER_FAULT = 6
# One postback in four is "out of credits": an alert, so the alerts consumer has events to count.
STATUS_CODES = ("N801", "N801", "N801", "N811")


def loud_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if LOUD.match(line)]


def accepted_since(answers: list[Answer], moment: float) -> int:
    return sum(a.status == 200 and a.sent > moment for a in list(answers))


def kill_and_restart(cluster: LocalKafkaCluster, node_id: int, answers: list[Answer]) -> float:
    """SIGKILL ``node_id``, keep posting until it is fenced and postbacks are accepted again, start
    it on its kept data and wait until it serves; return how long the vendor was refused (s)."""
    cluster.kill(node_id)
    killed = time.monotonic()
    cluster.wait_until_fenced(node_id)
    wait_for(lambda: accepted_since(answers, time.monotonic() - 0.5) > 0 and accepted_since(answers, killed) >= 20,
             60, "postbacks accepted on the two nodes left")
    refused = [a for a in list(answers) if a.answered > killed and a.status != 200]
    window = max((a.answered for a in refused), default=killed) - killed
    cluster.start_node(node_id)
    wait_for(lambda: all(node_id in state.isr for state in cluster.describe(TOPIC).values()), 60,
             f"node {node_id} back in every partition's ISR")
    return window


@pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])
def test_leader_and_controller_deaths_under_load_lose_and_double_nothing(
        kafka_cluster: LocalKafkaCluster, receiver: Receiver, tmp_path: Path, spool: bool) -> None:  # noqa: F811
    cluster = kafka_cluster
    create_topics(cluster.bootstrap_servers, [TOPIC, DLQ], partitions=3, replication_factor=3)
    dsn = f"duckdb:///{tmp_path}/analytics.duckdb"
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers=cluster.bootstrap_servers, events_topic=TOPIC, consumer_group="cluster-fault",
        topic_partitions=3, topic_replication_factor=3, analytics_dsn=dsn)
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_PRODUCE_TIMEOUT_SECONDS": "2", "PASSPOST_LOG_LEVEL": "info"}
    if spool:  # as the production overlay runs: a broker's death is no refusal at all
        env.update({"PASSPOST_SPOOL_DIR": str(tmp_path / "spool"), "PASSPOST_SPOOL_DRAIN_SECONDS": "10"})
    alerts_state = tmp_path / "alerts-state.json"
    alerts_env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "PASSPOST_EVENTS_TOPIC": TOPIC,
                  "PASSPOST_CONSUMER_GROUP": "cluster-fault-alerts", "PASSPOST_ALERT_WEBHOOK_URL": receiver.url,
                  "PASSPOST_ALERT_STATE_FILE": str(alerts_state), "PASSPOST_ALERT_RESOLVE_AFTER_SECONDS": "600",
                  "PASSPOST_LOG_LEVEL": "info"}
    alerts_log = tmp_path / "alerts.log"
    answers: list[Answer] = []
    stop = threading.Event()
    windows: dict[str, float] = {}
    with live_ingress(env, tmp_path / "ingress.log") as ingress, \
            live_consumer(settings, tmp_path / "consumer.log", PASSPOST_LOG_LEVEL="info") as consumer, \
            alerts_process(alerts_env, alerts_log) as alerts:
        workers = [threading.Thread(target=keep_posting, args=(ingress.url, n, stop, answers, STATUS_CODES))
                   for n in range(4)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: accepted_since(answers, 0) >= 40, 60, "the stream to be answered")
            ingress_quiet, consumer_quiet = len(loud_lines(ingress.log)), len(loud_lines(consumer.log))
            alerts_quiet = len(loud_lines(alerts_log))

            leader = cluster.partition_leader(TOPIC, 0)
            windows[f"leader {leader}"] = kill_and_restart(cluster, leader, answers)
            controller = cluster.active_controller()
            windows[f"controller {controller}"] = kill_and_restart(cluster, controller, answers)
            wait_for(lambda: accepted_since(answers, time.monotonic() - 0.5) > 0, 30, "the stream healthy at the end")
            # The ingress sees every broker again: one it no longer writes to is probed all the same.
            wait_for(lambda: all(f'passpost_kafka_broker_reachable{{node="{node}"}} 1.0' in
                                 httpx.get(f"{ingress.url}/metrics", timeout=5).text for node in (1, 2, 3)),
                     20, "the ingress to report every broker reachable")
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        accepted = [event_id for a in answers if a.status == 200 for event_id in a.event_ids]
        wait_for(lambda: consumer.metric("passpost_consumer_events_total") >= len(accepted), 60,
                 "the consumer to store every accepted event")
        records = read_all(cluster.bootstrap_servers, TOPIC, timeout=15)
        wait_for(lambda: alerts_offsets(alerts_state) >= len(records), 60, "the alerts consumer to count every event")
        assert ingress.process.poll() is None and consumer.process.poll() is None  # no restart needed
        assert alerts.poll() is None
        consumer_metrics = httpx.get(f"http://127.0.0.1:{consumer.port}/metrics", timeout=5).text
        assert re.findall(r'^passpost_kafka_broker_reachable\{consumer="analytics",node="(\d)"\} 1\.0$',
                          consumer_metrics, re.MULTILINE), consumer_metrics
        metrics = httpx.get(f"{ingress.url}/metrics", timeout=5).text
        episodes = re.search(r"^passpost_unavailable_episodes_total (\S+)$", metrics, re.MULTILINE)
        assert episodes is not None and (0 if spool else 1) <= float(episodes.group(1)) <= 2  # one per death at most
        ingress.process.send_signal(signal.SIGTERM)
        assert ingress.process.wait(30) == 0, ingress.log.read_text()
        assert consumer.terminate() == 0, consumer.log.read_text()
        alerts.send_signal(signal.SIGTERM)
        assert alerts.wait(30) == 0, alerts_log.read_text()

    events = [cast("dict[str, Any]", fastavro.schemaless_reader(io.BytesIO(r.value[10:]), SCHEMA)) for r in records]
    on_topic = [event["event_id"] for event in events]
    doubled = [event_id for event_id, count in Counter(on_topic).items() if count > 1]
    # With the spool too: a record spooled while its first send was undecided is sent again
    # only if that send failed (ingest/forwarder.py).
    assert not doubled, f"{len(doubled)} events are on the topic more than once"
    assert not set(accepted) - set(on_topic), "postbacks answered 200 are missing from the topic"
    if spool:
        assert {a.status for a in answers} == {200}, Counter(a.status for a in answers)
    # Order: a worker posts its next postback only once the last was answered, so among its
    # postbacks accepted into one partition (those of one key included) the offsets follow the
    # order they were sent in.
    where = {event_id: (r.partition, r.offset) for event_id, r in zip(on_topic, records, strict=True)}
    for worker in {a.serial.split("-")[0] for a in answers}:
        by_partition: dict[int, list[int]] = {}
        for answer in answers:
            if answer.status == 200 and answer.serial.split("-")[0] == worker:
                for event_id in answer.event_ids:
                    partition, offset = where[event_id]
                    by_partition.setdefault(partition, []).append(offset)
        assert all(offsets == sorted(offsets) for offsets in by_partition.values()), worker
    store = open_store(dsn, read_only=True)
    try:
        stored = [row[0] for row in store._execute("SELECT event_id FROM pass_postbacks")]
    finally:
        store.close()
    assert sorted(stored) == sorted(set(on_topic))  # the store is the topic, each event exactly once
    out_of_credits = {event["event_id"] for event in events if event["status_code"] == "N811"}
    counted = sum(group["count"] for group in json.loads(alerts_state.read_text())["state"]["grouper"]["groups"]
                  if group["labels"].get("status_code") == "N811")
    assert out_of_credits and counted == len(out_of_credits)  # the alerts count each event once
    assert receiver.bodies, "the out-of-credits alert was delivered"

    ingress_loud = loud_lines(ingress.log)[ingress_quiet:]
    consumer_loud = loud_lines(consumer.log)[consumer_quiet:]
    alerts_loud = loud_lines(alerts_log)[alerts_quiet:]
    print(f"refusal windows {windows}; {len(accepted)} accepted, {len(answers) - len(accepted)} refused; "
          f"loud lines: ingress {len(ingress_loud)}, analytics {len(consumer_loud)}, alerts {len(alerts_loud)}")
    print("\n".join(["ingress:", *ingress_loud, "analytics:", *consumer_loud, "alerts:", *alerts_loud]))
    assert len(ingress_loud) <= 2 * LOUD_LINES_PER_FAULT, "\n".join(ingress_loud)
    assert len(consumer_loud) <= 2 * LOUD_LINES_PER_FAULT, "\n".join(consumer_loud)
    assert len(alerts_loud) <= 2 * LOUD_LINES_PER_FAULT, "\n".join(alerts_loud)


def alerts_offsets(state: Path) -> int:
    """How many records of the topic the alerts consumer's saved state covers."""
    try:
        return sum(json.loads(state.read_text())["state"]["offsets"].values())
    except (FileNotFoundError, ValueError, KeyError):
        return 0
