"""A real single-node Kafka broker (KRaft) for development and tests, run from Kafka's own jars.

The launcher by concern: ``jars`` (the Maven jar cache), ``certificates`` (a throwaway CA),
``metadata`` (the readiness probe), ``config`` (the broker's properties), ``storage`` (the
formatted KRaft storage), ``jvm`` (the command line and the running process), ``broker``
(``LocalKafka``, which ties them together), ``cluster`` (``LocalKafkaCluster``, three such nodes
with RF 3 and min ISR 2) and ``cli`` (``python -m passpost_dev.kafka fetch|run``).
The names below are the public ones.
"""

from passpost_dev.kafka.broker import LocalKafka
from passpost_dev.kafka.certificates import Certificates, make_certificates
from passpost_dev.kafka.cluster import CLUSTER_NODE_IDS, LocalKafkaCluster
from passpost_dev.kafka.config import SASL_MECHANISMS, SECURE_LISTENERS, SSL_CLIENT_AUTH, Quorum
from passpost_dev.kafka.errors import LocalKafkaError, java_executable, require_executable
from passpost_dev.kafka.jars import (
    DEPENDENCY_PLUGIN,
    KAFKA_VERSION,
    LOG4J_VERSION,
    ensure_kafka_jars,
    kafka_jars_cached,
    maven_error,
)
from passpost_dev.kafka.metadata import PartitionState

__all__ = [
    "CLUSTER_NODE_IDS", "DEPENDENCY_PLUGIN", "KAFKA_VERSION", "LOG4J_VERSION", "SASL_MECHANISMS", "SECURE_LISTENERS",
    "SSL_CLIENT_AUTH", "Certificates", "LocalKafka", "LocalKafkaCluster", "LocalKafkaError", "PartitionState",
    "Quorum", "ensure_kafka_jars", "java_executable", "kafka_jars_cached", "make_certificates", "maven_error",
    "require_executable",
]
