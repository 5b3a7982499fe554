"""The local broker (passpost_dev/kafka/broker.py) is a real one: it confirms acks=all and keeps data across
restarts, and says why when it cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from passpost_dev.kafka import LocalKafka, LocalKafkaError
from tests.kafka_helpers import create_topics, read_all, run_sync, unique_topic


async def _produce(bootstrap: str, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k", headers=headers)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
    run_sync(_produce(bootstrap, topic, value, headers or []))


@pytest.mark.kafka
def test_records_confirmed_with_acks_all_survive_stop_and_kill(local_kafka: LocalKafka) -> None:
    topic = unique_topic("localkafka")
    address = local_kafka.bootstrap_servers
    create_topics(address, [topic])
    produce(address, topic, b"before stop", [("source", b"test")])

    local_kafka.stop()
    assert not local_kafka.running
    local_kafka.start()
    assert local_kafka.bootstrap_servers == address  # clients can simply reconnect
    produce(address, topic, b"before kill")

    local_kafka.kill()  # no clean shutdown: log recovery must find both records
    local_kafka.start()

    records = read_all(address, topic, expected=2)
    assert [r.value for r in records] == [b"before stop", b"before kill"]
    assert list(records[0].headers) == [("source", b"test")]
    assert records[0].key == b"k"


@pytest.mark.kafka
def test_a_broker_that_cannot_start_says_why_with_its_log(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path, heap="not-a-size")
    with pytest.raises(LocalKafkaError) as raised:
        kafka.start(timeout=30)
    message = str(raised.value)
    assert "exited during start-up" in message
    assert "Invalid maximum heap size" in message  # the JVM's own words, from the log
    assert not kafka.running
    kafka.close()


def test_secured_listeners_are_checked_and_absent_ones_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown listeners"):
        LocalKafka(tmp_path, listeners={"SASL_PLAINTEXT", "KERBEROS"})
    with pytest.raises(ValueError, match="ssl_client_auth"):
        LocalKafka(tmp_path, ssl_client_auth="sometimes")
    with pytest.raises(ValueError, match="sasl_password"):
        LocalKafka(tmp_path, listeners={"SASL_SSL"}, sasl_password="with,comma")
    plain = LocalKafka(tmp_path / "plain")
    with pytest.raises(LocalKafkaError, match="no SSL listener"):
        plain.bootstrap_servers_for("SSL")
    with pytest.raises(LocalKafkaError, match="no SSL or SASL_SSL listener"):
        _ = plain.ca_file
    plain.close()
