"""With PASSPOST_SCHEMA_REGISTRY_URL set: the ingress registers the schema and writes the Confluent
wire format, clients written elsewhere read it, and so does `passpost consume analytics`.

Everything runs against a real Apicurio Registry 3 (tests/registry_fixtures.py) and the
session's broker: no registry is mocked.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import httpx
import pytest
from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer
from prometheus_client import CollectorRegistry

from passpost.consumers.analytics.store import open_store
from passpost.ingest.postback import OutputBudget, parse_xml, postbacks_in
from passpost.schemas import evolution
from passpost.schemas.codec import DecodeError, decode, encode_confluent
from passpost.schemas.event import PassPostback
from passpost.schemas.registry import (
    COMPATIBILITY,
    RegistryClient,
    RegistryConfig,
    RegistryMetrics,
    RegistryRefused,
    RegistryResolver,
    RegistryWatch,
    schema_text,
    subject_for,
)
from tests.ecosystem import TcpProxy
from tests.kafka_helpers import read_all, unique_topic
from tests.live import free_port, live_ingress

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_bytes()


def passpost(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passpost", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def registry_env(bootstrap: str, registry: str, topic: str) -> dict[str, str]:
    return {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PASSPOST_SCHEMA_REGISTRY_URL": registry,
            "PASSPOST_EVENTS_TOPIC": topic, "PASSPOST_INGEST_OPEN": "true"}


def post_vendor_example(env: dict[str, str], log: Path) -> str:
    with live_ingress(env, log) as ingress:
        response = httpx.post(f"{ingress.url}/postbacks/passes", content=VENDOR_EXAMPLE,
                              headers={"Content-Type": "application/xml"}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["event_ids"][0])


def ccompat(registry: str, path: str) -> object:
    response = httpx.get(f"{registry}{path}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_ingress_registers_the_schema_and_writes_confluent_framing_that_confluent_kafka_reads(
        kafka_bootstrap: str, kafka_topics: object, schema_registry: str, tmp_path: Path) -> None:
    topic = unique_topic("registry")
    kafka_topics([topic])  # type: ignore[operator]
    event_id = post_vendor_example(registry_env(kafka_bootstrap, schema_registry, topic), tmp_path / "ingress.log")

    latest = ccompat(schema_registry, f"/subjects/{subject_for(topic)}/versions/latest")
    assert isinstance(latest, dict)
    assert evolution.canonical(json.loads(latest["schema"])) == evolution.canonical(evolution.current())
    assert ccompat(schema_registry, f"/config/{subject_for(topic)}") == {"compatibilityLevel": COMPATIBILITY}

    [record] = read_all(kafka_bootstrap, topic, expected=1)
    assert record.value[0] == 0 and int.from_bytes(record.value[1:5], "big") == latest["id"]

    # confluent-kafka (librdkafka) with its own Avro deserializer and registry client: nothing of passpost.
    consumer = DeserializingConsumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": f"confluent-{topic}", "auto.offset.reset": "earliest",
        "key.deserializer": StringDeserializer("utf_8"),
        "value.deserializer": AvroDeserializer(SchemaRegistryClient({"url": schema_registry, "timeout": 10})),
    })
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None, message and message.error()
    finally:
        consumer.close()
    event = message.value()
    assert event["event_id"] == event_id
    assert (event["origin"], event["status_code"], event["outcome"]) == ("GENERATE_PASS", "N801", "SUCCESS")
    assert (event["referenced_by"], event["reference_value"]) == ("Email", "vikmut@mail.com")
    assert (event["custom_pass_id"], event["pass_data_id"]) == ("ID-123323", "40556")
    assert event["serial_number"] == "5294CE37878AE-112613-113711"
    assert event["timestamp_raw"] == "2013-11-26T11:37:11-05:00"
    assert event["generated_at"].isoformat() == "2013-11-26T16:37:11+00:00"
    assert message.key() == record.key.decode()  # the key stays plain bytes, as without a registry


def test_consume_analytics_reads_registry_framed_events(kafka_bootstrap: str, kafka_topics: object,
                                                        schema_registry: str, tmp_path: Path) -> None:
    topic = unique_topic("registry-analytics")
    kafka_topics([topic])  # type: ignore[operator]
    env = registry_env(kafka_bootstrap, schema_registry, topic)
    event_id = post_vendor_example(env, tmp_path / "ingress.log")

    dsn = f"duckdb:///{tmp_path / 'analytics.duckdb'}"
    port = free_port()
    log = tmp_path / "consumer.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "passpost", "consume", "analytics"], stdout=sink, stderr=sink,
            env={**os.environ, **env, "PASSPOST_ANALYTICS_DSN": dsn, "PASSPOST_CONSUMER_PORT": str(port),
                 "PASSPOST_CONSUMER_GROUP": f"analytics-{topic}"})
    try:
        deadline = time.monotonic() + 60
        while not _metric(port, 'passpost_consumer_events_total{consumer="analytics"}') >= 1:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert _metric(port, "passpost_schema_registry_up") == 1
        assert _metric(port, 'passpost_consumer_dead_letters_total{consumer="analytics",reason="undecodable"}') <= 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    store = open_store(dsn)
    try:
        rows = store._execute("SELECT event_id, origin, outcome, serial_number, custom_pass_id FROM pass_postbacks")
    finally:
        store.close()
    assert rows == [(event_id, "GENERATE_PASS", "SUCCESS", "5294CE37878AE-112613-113711", "ID-123323")]


def _metric(port: int, series: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_registry_unreachable_at_start_is_one_line_exit_1_without_credentials(tmp_path: Path) -> None:
    closed = f"http://reader:s3cret-pw@127.0.0.1:{free_port()}/apis/ccompat/v7"
    env = {"PASSPOST_SCHEMA_REGISTRY_URL": closed, "PASSPOST_INGEST_OPEN": "true", "PASSPOST_PORT": str(free_port()),
           "PASSPOST_CONSUMER_PORT": str(free_port()), "PASSPOST_ANALYTICS_DSN": f"duckdb:///{tmp_path / 'a.duckdb'}",
           "PASSPOST_SCHEMA_REGISTRY_USERNAME": "reader", "PASSPOST_SCHEMA_REGISTRY_PASSWORD": "other-s3cret"}
    for command in (["serve"], ["consume", "analytics"], ["schema", "register"], ["schema", "check"]):
        result = passpost(*command, env=env)
        assert result.returncode == 1, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "schema registry http://127.0.0.1:" in lines[0] and "unreachable" in lines[0], \
            (command, result.stderr)
        assert "s3cret" not in result.stderr + result.stdout


def test_without_auto_register_the_ingress_refuses_until_schema_register(
        kafka_bootstrap: str, kafka_topics: object, schema_registry: str, tmp_path: Path) -> None:
    topic = unique_topic("registry-manual")
    kafka_topics([topic])  # type: ignore[operator]
    env = {**registry_env(kafka_bootstrap, schema_registry, topic), "PASSPOST_SCHEMA_REGISTRY_AUTO_REGISTER": "false",
           "PASSPOST_PORT": str(free_port())}
    refused = passpost("serve", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [(
        f"passpost: error: the event schema is not registered under subject {topic}-value at {schema_registry} and "
        "PASSPOST_SCHEMA_REGISTRY_AUTO_REGISTER is false: run `passpost schema register`")]

    registered = passpost("schema", "register", env=env)
    assert registered.returncode == 0, registered.stderr
    assert f"registered under {topic}-value" in registered.stdout and COMPATIBILITY in registered.stdout
    post_vendor_example(env, tmp_path / "ingress.log")
    [record] = read_all(kafka_bootstrap, topic, expected=1)
    assert record.value[0] == 0

    checked = passpost("schema", "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "schemas/history: compatible both ways with pass_postback.v1.avsc" in checked.stdout
    assert f"registry: compatible with subject {topic}-value (level {COMPATIBILITY})" in checked.stdout


def test_schema_check_without_a_registry_checks_the_kept_versions() -> None:
    result = passpost("schema", "check", env={})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compatible both ways with pass_postback.v1.avsc" in result.stdout
    assert "registry: not asked" in result.stdout


def _older_schema() -> dict[str, object]:
    """A writer schema as an earlier release could have had it: without `extra` (which has a default)."""
    schema = evolution.current()
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "extra"]  # type: ignore[index]
    return schema


def _newer_schema() -> dict[str, object]:
    """A later release: one more optional field."""
    schema = evolution.current()
    schema["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})  # type: ignore[index]
    return schema


def test_consumers_resolve_older_and_newer_writer_schemas_by_id_with_one_call_per_id(schema_registry: str) -> None:
    subject = subject_for(unique_topic("registry-evolution"))
    config = RegistryConfig(schema_registry)
    event = _sample_event()

    async def scenario() -> None:
        async with RegistryClient(config) as client:
            await client.set_compatibility(subject)
            older = await client.register(subject, json.dumps(_older_schema()))
            current = await client.register(subject, schema_text())
            newer = await client.register(subject, json.dumps(_newer_schema()))
            # FULL_TRANSITIVE: dropping a field without a default is refused by the registry.
            broken = evolution.current()
            broken["fields"].append({"name": "required_now", "type": "string"})
            with pytest.raises(RegistryRefused, match="409"):
                await client.register(subject, json.dumps(broken))
            assert (await client.is_compatible(subject, json.dumps(broken)))[0] is False

        def framed(schema: dict[str, object], schema_id: int, record: dict[str, object]) -> bytes:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
            return b"\0" + schema_id.to_bytes(4, "big") + out.getvalue()

        record = event.to_record()
        values = [framed(_older_schema(), older, {k: v for k, v in record.items() if k != "extra"}),
                  encode_confluent(event, current),
                  framed(_newer_schema(), newer, {**record, "channel": "app"})] * 50

        resolver = RegistryResolver(config, subject.removesuffix("-value"))
        fetched: list[int] = []
        original = resolver._client.schema

        async def counted(schema_id: int) -> str | None:
            fetched.append(schema_id)
            return await original(schema_id)

        resolver._client.schema = counted  # type: ignore[method-assign]
        try:
            await resolver.start()
            assert await resolver.learn(values, asyncio.Event())
            assert await resolver.learn(values, asyncio.Event())  # all cached now
        finally:
            await resolver.close()
        # Our own id came with start(); the two others once each, however many records carry them.
        assert sorted(fetched) == sorted([older, newer])
        decoded = [decode(value, resolver=resolver) for value in values[:3]]
        assert decoded[0].extra == {} and decoded[0].serial_number == event.serial_number
        assert decoded[1] == event and decoded[2] == event
        with pytest.raises(DecodeError, match="unknown Confluent schema id"):
            decode(b"\0" + (10**6).to_bytes(4, "big") + values[1][5:], resolver=resolver)

    asyncio.run(scenario())


def _sample_event() -> PassPostback:
    root, _ = parse_xml(VENDOR_EXAMPLE)
    [postback] = list(postbacks_in(root, OutputBudget(len(VENDOR_EXAMPLE), 10)))
    return postback.to_event(datetime(2026, 1, 1, tzinfo=UTC))


def _through_proxy(registry: str, proxy: TcpProxy) -> str:
    parts = urllib.parse.urlsplit(registry)
    return registry.replace(f":{parts.port}/", f":{proxy.port}/", 1)


def test_registry_gone_later_the_ingress_keeps_writing_with_its_cached_id(
        kafka_bootstrap: str, kafka_topics: object, schema_registry: str, tmp_path: Path) -> None:
    topic = unique_topic("registry-outage")
    kafka_topics([topic])  # type: ignore[operator]
    proxy = TcpProxy(urllib.parse.urlsplit(schema_registry).port or 0)
    env = registry_env(kafka_bootstrap, _through_proxy(schema_registry, proxy), topic)
    with live_ingress(env, tmp_path / "ingress.log") as ingress:
        assert "passpost_schema_registry_up 1.0" in httpx.get(f"{ingress.url}/metrics", timeout=5).text
        proxy.cut()
        response = httpx.post(f"{ingress.url}/postbacks/passes", content=VENDOR_EXAMPLE,
                              headers={"Content-Type": "application/xml"}, timeout=10)
        assert response.status_code == 200, response.text
    [record] = read_all(kafka_bootstrap, topic, expected=1)
    latest = ccompat(schema_registry, f"/subjects/{subject_for(topic)}/versions/latest")
    assert isinstance(latest, dict) and int.from_bytes(record.value[1:5], "big") == latest["id"]


def test_registry_gone_later_the_watch_and_the_resolver_say_so_and_cached_ids_keep_decoding(
        schema_registry: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = unique_topic("registry-outage-consumer")
    subject = subject_for(topic)
    proxy = TcpProxy(urllib.parse.urlsplit(schema_registry).port or 0)
    config = RegistryConfig(_through_proxy(schema_registry, proxy))
    event = _sample_event()

    async def scenario() -> None:
        async with RegistryClient(RegistryConfig(schema_registry)) as client:
            older = await client.register(subject, json.dumps(_older_schema()))
            current = await client.register(subject, schema_text())
        prometheus = CollectorRegistry()
        metrics = RegistryMetrics(prometheus)
        resolver = RegistryResolver(config, topic, metrics)
        watch = RegistryWatch(config, topic, current, metrics, interval=0.1)
        await resolver.start()
        watch.start()
        try:
            proxy.cut()
            # The id learnt at start still decodes, without the registry.
            assert decode(encode_confluent(event, current), resolver=resolver) == event
            # An id never seen waits for the registry (retrying) instead of failing the record.
            stopping = asyncio.Event()
            unseen = b"\0" + older.to_bytes(4, "big") + b"\0"
            learning = asyncio.create_task(resolver.learn([unseen], stopping))
            await asyncio.sleep(1.0)
            assert not learning.done()
            assert prometheus.get_sample_value("passpost_schema_registry_up") == 0
            assert (prometheus.get_sample_value("passpost_schema_registry_errors_total", {"reason": "unreachable"})
                    or 0) >= 2
            stopping.set()
            assert await learning is False
        finally:
            await watch.stop()
            await resolver.close()

    with caplog.at_level("WARNING", logger="passpost.schema_registry"):
        asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert any("unreachable" in m and "still writing with the cached schema id" in m for m in messages), messages
    assert any("wait (cached ids keep decoding)" in m for m in messages), messages
    # The watch says it once, not at every failed look.
    assert sum("still writing with the cached schema id" in m for m in messages) == 1
