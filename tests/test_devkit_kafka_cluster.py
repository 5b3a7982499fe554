"""The local three-node cluster (passpost_dev/kafka/cluster.py) is production's shape: RF 3 and min ISR 2
by default, acks=all survives a partition leader's and the active controller's death, and a node killed
comes back on its kept data. Its helpers name the partition leader and the active controller truly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from passpost_dev.kafka import CLUSTER_NODE_IDS, LocalKafkaCluster, LocalKafkaError
from tests.kafka_helpers import create_topics, read_all, run_sync, unique_topic


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=30000)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", partition=0)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, *values: bytes) -> None:
    run_sync(_produce(bootstrap, topic, list(values)))


def wait_for(condition: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {condition}")
        time.sleep(0.1)


@pytest.mark.kafka
def test_a_topic_is_replicated_three_times_and_a_dead_leader_loses_nothing(kafka_cluster: LocalKafkaCluster) -> None:
    cluster = kafka_cluster
    topic = unique_topic("cluster")
    # RF 3 as production; min ISR 2 comes from the brokers.
    create_topics(cluster.bootstrap_servers, [topic], replication_factor=3)
    state = cluster.describe(topic)[0]
    assert sorted(state.replicas) == list(CLUSTER_NODE_IDS)
    wait_for("all three replicas in sync", lambda: len(cluster.describe(topic)[0].isr) == 3)
    produce(cluster.bootstrap_servers, topic, b"before")

    leader = cluster.partition_leader(topic)
    cluster.kill(leader)
    assert leader not in cluster.running_nodes()
    # Fenced after broker.session.timeout.ms, the dead leader leaves the ISR and another leads.
    wait_for("a new leader", lambda: cluster.describe(topic)[0].leader not in (leader, -1))
    assert leader not in cluster.describe(topic)[0].isr
    produce(cluster.bootstrap_servers, topic, b"during")  # two in-sync replicas: min ISR met

    cluster.start_node(leader)  # on its kept data, at the same address
    wait_for("the restarted node back in sync", lambda: leader in cluster.describe(topic)[0].isr)
    assert [r.value for r in read_all(cluster.bootstrap_servers, topic, expected=2)] == [b"before", b"during"]


@pytest.mark.kafka
def test_the_active_controller_is_named_and_another_takes_over_when_it_dies(kafka_cluster: LocalKafkaCluster) -> None:
    cluster = kafka_cluster
    controller = cluster.active_controller()
    assert controller in CLUSTER_NODE_IDS
    cluster.kill(controller)
    successor = cluster.active_controller()
    assert successor in CLUSTER_NODE_IDS and successor != controller
    cluster.wait_until_fenced(controller)  # until then, clients still try the dead node
    # The cluster still creates topics, which needs a controller, and still takes acks=all writes.
    topic = unique_topic("cluster-controller")
    create_topics(cluster.bootstrap_servers, [topic], replication_factor=3)
    produce(cluster.bootstrap_servers, topic, b"after")
    assert [r.value for r in read_all(cluster.bootstrap_servers, topic, expected=1)] == [b"after"]
    cluster.start()  # starts only the node that is down
    assert sorted(cluster.running_nodes()) == list(CLUSTER_NODE_IDS)


def test_a_node_outside_the_cluster_is_an_error_that_names_the_nodes() -> None:
    cluster = LocalKafkaCluster()
    try:
        with pytest.raises(LocalKafkaError, match=r"no node 7; the nodes are \[1, 2, 3\]"):
            cluster.kill(7)
    finally:
        cluster.close()
