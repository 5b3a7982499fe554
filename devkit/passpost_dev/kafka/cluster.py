"""A three-node KRaft cluster on loopback, from the same jars as ``LocalKafka``: the shape production runs.

Production has three brokers, replication factor 3 and ``min.insync.replicas`` 2; a test on one
broker cannot show what a broker's death does to producers with acks=all, to a consumer whose
group coordinator dies, or to a cluster whose active controller dies. Each node is broker and
controller at once (combined mode), so any one may die and the other two keep a quorum.

    with LocalKafkaCluster() as cluster:
        cluster.bootstrap_servers             # "127.0.0.1:A,127.0.0.1:B,127.0.0.1:C"
        leader = cluster.partition_leader(topic, 0)
        cluster.kill(leader)                  # SIGKILL, as a crash
        cluster.active_controller()           # the metadata log's leader, a node id
        cluster.start_node(leader)            # back on its kept data, same address

Every node reuses ``LocalKafka``'s start-up aids (the class-data-sharing archive and the
formatted storage template, copied under the cluster's id and the node's id), and the nodes'
JVMs start together, so the cluster serves about as fast as one broker does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

from passpost_dev.kafka import storage
from passpost_dev.kafka.broker import LocalKafka
from passpost_dev.kafka.config import Quorum
from passpost_dev.kafka.errors import LocalKafkaError
from passpost_dev.kafka.lifecycle import Started
from passpost_dev.kafka.metadata import PROBE_ERRORS, PartitionState, request_metadata, request_quorum_leader
from passpost_dev.ports import free_port

CLUSTER_NODE_IDS = (1, 2, 3)


def _cleanup(nodes: list[LocalKafka], owned_dir: Path | None) -> None:
    for node in nodes:
        node.kill()
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)


class LocalKafkaCluster(Started):
    """Three Kafka nodes (broker+controller each) on 127.0.0.1: RF 3, min ISR 2, data in ``workdir``.

    Node ids are 1, 2 and 3; a node's ports and data survive ``kill``/``stop``, so
    ``start_node`` brings it back at the same address on its kept log. ``close()`` stops
    every node and deletes the directory if this object made it.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        heap: str = "320m",
        log_level: str = "WARN",
        cache_dir: Path | None = None,
        extra_properties: Mapping[str, object] | None = None,
    ) -> None:
        self._owns_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="passpost-kafka-cluster-")) if workdir is None else Path(workdir)
        ports: list[int] = []
        while len(ports) < 2 * len(CLUSTER_NODE_IDS):
            port = free_port()
            if port not in ports:
                ports.append(port)
        controller_ports = dict(zip(CLUSTER_NODE_IDS, ports[len(CLUSTER_NODE_IDS):], strict=True))
        self.quorum = Quorum(cluster_id=storage.kafka_uuid(), voters=controller_ports,
                             replication_factor=3, min_insync_replicas=2)
        self.nodes: dict[int, LocalKafka] = {
            node_id: LocalKafka(self.workdir / f"node-{node_id}", heap=heap, port=port, log_level=log_level,
                                cache_dir=cache_dir, extra_properties=extra_properties, node_id=node_id,
                                quorum=self.quorum)
            for node_id, port in zip(CLUSTER_NODE_IDS, ports[:len(CLUSTER_NODE_IDS)], strict=True)
        }
        self._finalizer = weakref.finalize(
            self, _cleanup, list(self.nodes.values()), self.workdir if self._owns_dir else None)

    @property
    def bootstrap_servers(self) -> str:
        """Every node's PLAINTEXT address, so that a client starts while any two are up."""
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def node(self, node_id: int) -> LocalKafka:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise LocalKafkaError(f"no node {node_id}; the nodes are {sorted(self.nodes)}") from None

    def running_nodes(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.running]

    def start(self, timeout: float = 90) -> LocalKafkaCluster:
        """Start every node that is not running, together, and return once each serves."""
        deadline = time.monotonic() + timeout
        starting = [node for node in self.nodes.values() if not node.running]
        try:
            for node in starting:
                node.launch(deadline)
            for node in starting:
                node.wait_until_serving(deadline)
        except BaseException:
            for node in starting:
                node.kill()
            raise
        return self

    def start_node(self, node_id: int, timeout: float = 60) -> LocalKafka:
        """Start one node again (on its kept data) and return once it serves."""
        return self.node(node_id).start(timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.node(node_id).kill()

    def stop_node(self, node_id: int, timeout: float = 30) -> None:
        """Shut one node down cleanly (SIGTERM): it hands its leaderships over first."""
        self.node(node_id).stop(timeout)

    def live_brokers(self, timeout: float = 5.0) -> set[int]:
        """The node ids the metadata lists: registered and not fenced. A node killed stays
        listed until the controller fences it (``broker.session.timeout.ms``)."""
        for address in self._running_addresses():
            try:
                return set(request_metadata(*address, timeout=timeout).brokers)
            except PROBE_ERRORS:
                continue
        raise LocalKafkaError("no node of the cluster answers a metadata request")

    def wait_until_fenced(self, node_id: int, timeout: float = 30.0) -> float:
        """Wait until the metadata no longer lists ``node_id``; return how long that took."""
        start = time.monotonic()
        while node_id in self.live_brokers():
            if time.monotonic() - start >= timeout:
                raise LocalKafkaError(f"node {node_id} is still listed after {timeout} s")
            time.sleep(0.1)
        return time.monotonic() - start

    def describe(self, topic: str, timeout: float = 5.0) -> dict[int, PartitionState]:
        """``{partition: (leader, replicas, isr)}`` for ``topic``, as a running node reports it."""
        for address in self._running_addresses():
            try:
                answer = request_metadata(*address, timeout=timeout, topics=[topic])
            except PROBE_ERRORS:
                continue
            return answer.topics.get(topic, {})
        raise LocalKafkaError("no node of the cluster answers a metadata request")

    def partition_leader(self, topic: str, partition: int = 0, timeout: float = 10.0) -> int:
        """The node id leading ``topic``'s ``partition``; waits up to ``timeout`` s while it has none.

        As the metadata says: a node killed stays leader until the controller fences it
        (``broker.session.timeout.ms``, 3 s here)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.describe(topic).get(partition)
            if state is not None and state.leader >= 0:
                return state.leader
            if time.monotonic() >= deadline:
                raise LocalKafkaError(f"{topic}-{partition} has no leader ({state})")
            time.sleep(0.1)

    def active_controller(self, timeout: float = 15.0) -> int:
        """The node id of the active controller (the KRaft quorum's leader); waits up to
        ``timeout`` s while an election is under way."""
        deadline = time.monotonic() + timeout
        last_error = "no node running"
        while True:
            # Asked of the controllers themselves: a broker forwards DescribeQuorum to the
            # active controller, and waits on it while a dead one is still believed active.
            for address in self._running_controller_addresses():
                try:
                    return request_quorum_leader(*address, timeout=2.0)
                except (*PROBE_ERRORS, LookupError) as error:
                    last_error = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                raise LocalKafkaError(f"the cluster names no active controller ({last_error})")
            time.sleep(0.1)

    def close(self) -> None:
        """End every node and delete the directory if this object made it.

        SIGKILL, not SIGTERM: the last node to stop cleanly would wait, without a quorum, for
        a controller to accept its shutdown (30 s); a kept ``workdir`` recovers its logs on
        the next start as after a crash."""
        for node in self.nodes.values():
            node.kill()
            node.close()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._finalizer.detach()

    def __repr__(self) -> str:
        return f"<LocalKafkaCluster nodes {sorted(self.nodes)} running {self.running_nodes()} in {self.workdir}>"

    def _running_controller_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.quorum.voters[node_id]) for node_id, node in self.nodes.items() if node.running]

    def _running_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes.values() if node.running and node.port is not None]
