"""Kafka security settings against a real broker: SASL (SCRAM-SHA-512), TLS and both.

One broker serves the module, with a SASL_PLAINTEXT, an SSL (client certificate
required) and a SASL_SSL listener next to its PLAINTEXT one. Over each, the ingress
accepts a postback, a consumer built from ``client_options`` reads the event back, and
``passpost topics`` creates the topics; wrong credentials or a wrong CA stop
``passpost serve`` at start-up with one line that says what is wrong.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from starlette.testclient import TestClient

from passpost import settings as settings_module
from passpost.ingest.app import POSTBACK_PATH, create_app
from passpost.kafka import client_options, create_topics
from passpost.schemas.codec import decode
from passpost.settings import Settings
from passpost_dev.kafka import SECURE_LISTENERS, Certificates, LocalKafka, make_certificates
from tests.live import free_port

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_bytes()
TOKEN = "security-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    workdir = tmp_path_factory.mktemp("secured-kafka")
    with LocalKafka(workdir, listeners=SECURE_LISTENERS, ssl_client_auth="required") as kafka:
        print(f"secured Kafka at {kafka.bootstrap_servers}, log {kafka.log_path}")
        yield kafka


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA the broker's certificate does not chain to."""
    return make_certificates(tmp_path_factory.mktemp("other-ca"))


def env_for(kafka: LocalKafka, protocol: str, **overrides: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        # The SSL listener wants a client certificate; SASL_SSL checks only the broker's.
        **kafka.client_env(protocol, client_certificate=protocol == "SSL"),
        "PASSPOST_EVENTS_TOPIC": f"events-{suffix}",
        "PASSPOST_DEAD_LETTER_TOPIC": f"dlq-{suffix}",
        "PASSPOST_INGEST_TOKENS": TOKEN,
        "PASSPOST_PRODUCE_TIMEOUT_SECONDS": "5",
        **overrides,
    }


async def read_one(settings: Settings, timeout: float = 15.0) -> bytes:
    """The first record of the events topic, read in a consumer group as the consumers do."""
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        **client_options(settings),
        group_id=f"security-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await asyncio.wait_for(consumer.start(), timeout)
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout)
        return record.value
    finally:
        await consumer.stop()


@pytest.mark.parametrize("protocol", SECURE_LISTENERS)
def test_ingress_and_consumer_work_end_to_end(secured: LocalKafka, protocol: str) -> None:
    settings = settings_module.load(env_for(secured, protocol))
    assert settings.kafka_security_protocol == protocol
    created = asyncio.run(create_topics(settings))
    assert created == {settings.events_topic: "created", settings.dead_letter_topic: "created"}

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post(POSTBACK_PATH, content=VENDOR_EXAMPLE,
                               headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/xml"})
        assert response.status_code == 200, response.text
        [event_id] = response.json()["event_ids"]

    event = decode(asyncio.run(read_one(settings)))
    assert event.event_id == event_id
    assert (event.origin, event.status_code, event.custom_pass_id) == ("GENERATE_PASS", "N801", "ID-123323")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_other_sasl_mechanisms(secured: LocalKafka, mechanism: str) -> None:
    settings = settings_module.load(env_for(secured, "SASL_SSL", PASSPOST_KAFKA_SASL_MECHANISM=mechanism))
    assert set(asyncio.run(create_topics(settings)).values()) == {"created"}


def passpost(command: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``passpost <command>`` with ``env`` added to this process's; an empty value unsets."""
    merged = {name: value for name, value in {**os.environ, **env}.items() if value != ""}
    return subprocess.run([sys.executable, "-m", "passpost", command], check=False, env=merged,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SSL"])
def test_topics_command(secured: LocalKafka, protocol: str) -> None:
    env = env_for(secured, protocol)
    result = passpost("topics", env)
    assert result.returncode == 0, result.stderr
    assert f"{env['PASSPOST_EVENTS_TOPIC']}: created" in result.stdout
    assert f"{env['PASSPOST_DEAD_LETTER_TOPIC']}: created" in result.stdout


WRONG = {
    "scram password": ("SASL_PLAINTEXT", {"PASSPOST_KAFKA_SASL_PASSWORD": "not-the-password"},
                       "refused the credentials of SASL user 'passpost' (SCRAM-SHA-512): Authentication failed"),
    "scram user over tls": ("SASL_SSL", {"PASSPOST_KAFKA_SASL_USERNAME": "nobody"},
                            "refused the credentials of SASL user 'nobody' (SCRAM-SHA-512)"),
    "ca": ("SSL", {}, "TLS certificate verify failed for Kafka at 127.0.0.1:"),
    "ca with sasl": ("SASL_SSL", {}, "TLS certificate verify failed for Kafka at 127.0.0.1:"),
    "no client certificate": ("SSL", {"PASSPOST_KAFKA_SSL_CERT_FILE": "", "PASSPOST_KAFKA_SSL_KEY_FILE": ""},
                              "does it not require a client certificate?"),
}


@pytest.mark.parametrize("case", WRONG)
def test_serve_with_wrong_credentials_stops_at_start_up_with_one_line(
    secured: LocalKafka, other_ca: Certificates, case: str
) -> None:
    protocol, overrides, expected = WRONG[case]
    env = env_for(secured, protocol, PASSPOST_PORT=str(free_port()), **overrides)
    if case.startswith("ca"):
        env["PASSPOST_KAFKA_SSL_CA_FILE"] = str(other_ca.ca_file)
    result = passpost("serve", env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("passpost: error: ")
    assert expected in lines[0], lines[0]
    assert "not-the-password" not in result.stderr + result.stdout
