"""The local broker's configuration: ``server.properties`` and ``log4j2.properties`` in its folder.

One node is broker and controller at once (KRaft), tuned to start fast and stay small on a
two-core machine. Secured listeners (SASL_PLAINTEXT, SSL, SASL_SSL) sit next to the PLAINTEXT
one; the broker talks to itself over PLAINTEXT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from passpost_dev.kafka.certificates import Certificates, pem_property

NODE_ID = 1
# The listeners LocalKafka can add next to PLAINTEXT, by their security protocol.
SECURE_LISTENERS = ("SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
SSL_CLIENT_AUTH = ("none", "requested", "required")


@dataclass(frozen=True)
class Quorum:
    """The nodes one broker shares a KRaft cluster with: each is broker and controller at once.

    ``voters`` maps every node id to its controller port. A single broker is a quorum of one
    with replication factor 1; ``LocalKafkaCluster`` makes one of three with RF 3 and min ISR 2,
    as production runs.
    """

    cluster_id: str
    voters: Mapping[int, int]
    replication_factor: int = 1
    min_insync_replicas: int = 1

    def voters_property(self) -> str:
        return ",".join(f"{node}@127.0.0.1:{port}" for node, port in sorted(self.voters.items()))


@dataclass(frozen=True)
class BrokerConfig:
    """What one start of the broker is configured with; ``listener_ports`` holds the secured listeners only."""

    workdir: Path
    port: int
    controller_port: int
    listener_ports: Mapping[str, int]
    sasl_username: str
    sasl_password: str
    ssl_client_auth: str
    log_level: str
    certificates: Certificates | None  # needed when a listener uses TLS
    # Set last, over the defaults: e.g. Kafka's authorizer for a test of ACLs.
    extra_properties: Mapping[str, object] = field(default_factory=dict)
    node_id: int = NODE_ID
    # None: a quorum of this node alone (controller_port), replication factor 1.
    quorum: Quorum | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def write(self) -> Path:
        """Write ``server.properties`` and ``log4j2.properties`` into ``workdir``; return the first."""
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.server_properties().items()),
                        encoding="utf-8")
        (self.workdir / "log4j2.properties").write_text(self.log4j2_properties(), encoding="utf-8")
        return path

    def server_properties(self) -> dict[str, object]:
        listeners = list(self.listener_ports)
        secured = [f"{name}://127.0.0.1:{port}" for name, port in self.listener_ports.items()]
        voters = (f"{self.node_id}@127.0.0.1:{self.controller_port}" if self.quorum is None
                  else self.quorum.voters_property())
        replicas = 1 if self.quorum is None else self.quorum.replication_factor
        min_isr = 1 if self.quorum is None else self.quorum.min_insync_replicas
        return {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self.port}",
                                   f"CONTROLLER://127.0.0.1:{self.controller_port}", *secured]),
            "advertised.listeners": ",".join([f"PLAINTEXT://127.0.0.1:{self.port}", *secured]),
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", *(f"{name}:{name}" for name in listeners)]),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.data_dir,
            # One broker: every internal topic must fit on it (RF 1). A cluster replicates
            # everything as production does, so a node's death is a fault tolerated.
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "min.insync.replicas": min_isr,
            "default.replication.factor": replicas,
            "num.partitions": 1,
            "auto.create.topics.enable": "false",
            # The first consumer group or transactional producer creates these topics;
            # the defaults (50 partitions each) take seconds to create on two cores.
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.num.partitions": 1,
            # Consumers in tests should get their partitions at once, not after 3 s.
            "group.initial.rebalance.delay.ms": 0,
            # A broker SIGKILLed and started again must wait until the controller expires
            # its previous session before it may register again: 9 s by default.
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            # Fewer threads than the defaults: two cores, one client at a time.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.cleaner.threads": 1,
            "auto.leader.rebalance.enable": "false",
            # Small sparse index files and segments keep the data dir small.
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.index.size.max.bytes": 1024 * 1024,
            "metadata.log.segment.bytes": 8 * 1024 * 1024,
            **self._security_properties(),
            **self.extra_properties,
        }

    def _security_properties(self) -> dict[str, object]:
        properties: dict[str, object] = {}
        for name in self.listener_ports:
            prefix = f"listener.name.{name.lower()}."
            if name.startswith("SASL_"):
                properties[prefix + "sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
                for mechanism in ("scram-sha-512", "scram-sha-256"):
                    # The users themselves are in the metadata, written at format time.
                    properties[prefix + f"{mechanism}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
                properties[prefix + "plain.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'user_{self.sasl_username}="{self.sasl_password}";')
            if name == "SSL":
                properties[prefix + "ssl.client.auth"] = self.ssl_client_auth
        if any(name.endswith("SSL") for name in self.listener_ports):
            certificates = self.certificates
            if certificates is None:
                raise ValueError("a TLS listener needs certificates")
            # PEM given inline: no key store files, no store or key passwords.
            properties.update({
                "ssl.keystore.type": "PEM",
                "ssl.keystore.certificate.chain": "\\n".join(
                    pem_property(path) for path in (certificates.server_cert_file, certificates.ca_file)),
                "ssl.keystore.key": pem_property(certificates.server_key_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.certificates": pem_property(certificates.ca_file),
            })
        return properties

    def scram_arguments(self) -> list[str]:
        """The storage tool's ``--add-scram`` arguments: the SASL user for each SCRAM mechanism."""
        if not any(name.startswith("SASL_") for name in self.listener_ports):
            return []
        return [argument for mechanism in SASL_MECHANISMS if mechanism.startswith("SCRAM")
                for argument in ("--add-scram",
                                 f"{mechanism}=[name={self.sasl_username},password={self.sasl_password}]")]

    def log4j2_properties(self) -> str:
        # Everything goes to the JVM's stdout, which the broker's process sends to its log, so
        # that log lines and JVM errors (bad heap size, missing class) share one file.
        return (
            "status = error\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.target = SYSTEM_OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            f"rootLogger.level = {self.log_level}\n"
            "rootLogger.appenderRef.out.ref = out\n"
        )
