"""The local broker is a real one: it confirms acks=all and keeps data across restarts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from passpost.localkafka import LocalKafka, LocalKafkaError, ensure_kafka_jars
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


@pytest.mark.parametrize("missing", ["java", "mvn"])
def test_a_missing_tool_is_a_one_line_error(missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in {"java", "mvn"} - {missing}:
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError) as raised:
        ensure_kafka_jars(tmp_path / "cache")
    assert f"`{missing}` is not on PATH" in str(raised.value)
    assert "\n" not in str(raised.value)
