"""How every passpost component talks to Kafka: one place for client options and topics.

The producer, the consumers and the admin client all take their connection options from
``client_options`` so that a setting (bootstrap servers, and later TLS and SASL) applies
to each of them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from passpost import kafka_health
from passpost.errors import ConfigurationError, PasspostError, describe_error
from passpost.settings import Settings

# Room for the record's own framing and headers around the largest body we accept: a
# dead letter carries the request body byte for byte, so it must fit in one record.
RECORD_OVERHEAD_BYTES = 64 * 1024


class KafkaUnavailable(PasspostError):
    """Kafka could not be reached or did not confirm in time. The message is one line."""


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by producers, consumers and admin clients."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": settings.kafka_client_id,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every client; a file that is not what its setting says is one line naming it."""
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.kafka_ssl_ca_file)
    except (ssl.SSLError, OSError) as error:
        raise ConfigurationError(f"PASSPOST_KAFKA_SSL_CA_FILE: {settings.kafka_ssl_ca_file} is not a CA bundle "
                                 f"in PEM ({describe_error(error)})") from None
    if settings.kafka_ssl_cert_file:
        try:
            context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
        except (ssl.SSLError, OSError) as error:
            raise ConfigurationError(
                f"PASSPOST_KAFKA_SSL_CERT_FILE / PASSPOST_KAFKA_SSL_KEY_FILE: {settings.kafka_ssl_cert_file} and "
                f"{settings.kafka_ssl_key_file or 'its key'} are not a certificate and its private key in PEM "
                f"({describe_error(error)})") from None
    return context


def max_record_bytes(settings: Settings) -> int:
    return settings.max_body_bytes + RECORD_OVERHEAD_BYTES


def topic_configs(settings: Settings) -> dict[str, str]:
    return {"max.message.bytes": str(max_record_bytes(settings))}


async def create_topics(settings: Settings, names: Iterable[str] | None = None) -> dict[str, str]:
    """Create the events and dead-letter topics; return ``{topic: "created" | "exists"}``."""
    names = list(names or (settings.events_topic, settings.dead_letter_topic))
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=15000)
    try:
        await start_client(admin, settings)
        outcome: dict[str, str] = {}
        for name in names:
            topic = NewTopic(
                name=name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs=topic_configs(settings),
            )
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                outcome[name] = "exists"
                continue
            outcome[name] = _creation_outcome(response, name)
        return outcome
    finally:
        await admin.close()


def _creation_outcome(response: Any, name: str) -> str:
    # aiokafka returns the broker's per-topic error codes instead of raising for them.
    for topic_error in getattr(response, "topic_errors", []):
        topic, code = topic_error[0], topic_error[1]
        if topic != name or code == 0:
            continue
        if code == TopicAlreadyExistsError.errno:
            return "exists"
        message = topic_error[2] if len(topic_error) > 2 else ""
        raise KafkaUnavailable(f"could not create topic {name}: error {code} {message}".strip())
    return "created"


async def start_client(client: Any, settings: Settings, timeout: float = 20.0) -> None:
    """Start an aiokafka client; if it cannot connect, close it and raise a one-line error."""
    # aiokafka logs each refused connection itself; the error raised here says it once.
    kafka_health.install()
    kafka_health.REACHABILITY.watch(client)
    try:
        with kafka_health.REACHABILITY.starting():
            await asyncio.wait_for(client.start(), timeout)
    except (KafkaError, OSError, TimeoutError) as error:
        with contextlib.suppress(Exception):
            await (client.close() if hasattr(client, "close") else client.stop())
        if isinstance(error, KafkaConnectionError) and "Unable to bootstrap" in str(error):
            # aiokafka only logs why each bootstrap server failed; connect once more to learn it.
            with contextlib.suppress(TimeoutError):
                error = await asyncio.wait_for(_bootstrap_failure(settings), timeout) or error
        raise KafkaUnavailable(_connection_problem(error, settings)) from None


async def _bootstrap_failure(settings: Settings) -> BaseException | None:
    """Why no bootstrap server answered: the first refusal of credentials or TLS, else the last error."""
    options = client_options(settings)
    options.pop("bootstrap_servers")
    last: BaseException | None = None
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connection = await create_conn(host.strip("[]"), int(port), request_timeout_ms=5000, **options)
            try:
                await connection.send(MetadataRequest([]))
            finally:
                connection.close()
        except (KafkaError, OSError, TimeoutError, ValueError) as error:
            if isinstance(error, (SaslAuthenticationFailed, ssl.SSLError)):
                return error
            last = error
    return last


def _connection_problem(error: BaseException, settings: Settings) -> str:
    servers, protocol = settings.kafka_bootstrap_servers, settings.kafka_security_protocol
    if isinstance(error, SaslAuthenticationFailed):
        reason = error.args[0] if error.args else error.description  # the broker's words
        return (f"Kafka at {servers} refused the credentials of SASL user {settings.kafka_sasl_username!r} "
                f"({settings.kafka_sasl_mechanism}): {reason}")
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"TLS certificate verify failed for Kafka at {servers}: {error.verify_message} "
                "(PASSPOST_KAFKA_SSL_CA_FILE must hold the CA that signed the broker's certificate)")
    if isinstance(error, ssl.SSLError):
        return f"TLS with Kafka at {servers} failed: {describe_error(error)}"
    hint = ""
    if isinstance(error, (KafkaConnectionError, ConnectionResetError, IllegalSaslStateError)):
        # The broker hung up on us: most often a listener of another security protocol.
        certificate = ""
        if protocol.endswith("SSL"):
            certificate = (", and does it accept the client certificate" if settings.kafka_ssl_cert_file
                           else ", and does it not require a client certificate")
        hint = f" (is {servers} a listener for {protocol}{certificate}?)"
    return f"cannot reach Kafka at {servers}: {describe_error(error)}{hint}"




async def topic_bounds(settings: Settings) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Beginning and end offsets of every partition of the events topic, now."""
    # Subscribed to the topic (group-less), the client holds its metadata once started.
    client = AIOKafkaConsumer(settings.events_topic, **client_options(settings), group_id=None,
                              enable_auto_commit=False)
    await start_client(client, settings)
    try:
        partitions = client.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(partitions)]
        return await client.beginning_offsets(tps), await client.end_offsets(tps)
    finally:
        await client.stop()
