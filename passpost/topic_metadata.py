"""What the cluster says about our topics: their id, the cluster's id, partitions and replicas.

aiokafka 0.14 speaks Metadata up to v5, which carries the cluster id but no topic ids
(they arrived in v10, Kafka 2.8). Stored offsets are only meaningful for the topic they
were read from, and a topic deleted and re-created under the same name, or the same name
on another cluster, is another topic: the topic id and the cluster id are what tell them
apart. So this module sends Metadata v11/v12 itself, through an aiokafka admin client's
connection (same TLS and SASL settings as every other client), using aiokafka's own
flexible-version protocol types. v11 and v12 encode identically for what is read here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

from passpost.errors import PasspostError, describe_error
from passpost.kafka import KafkaUnavailable, client_options, start_client
from passpost.settings import Settings

__all__ = ["ClusterTopics", "TopicIdentity", "TopicIdsUnsupported", "TopicInfo", "TopicMetadata", "describe_topics"]


class TopicIdsUnsupported(PasspostError):
    """The broker is too old to report topic ids (before Kafka 3.0). Not a ``KafkaUnavailable``: asking
    again cannot help, so no retry loop may take it for a broker that is restarting."""


class _Uuid(AbstractType[bytes]):
    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding UUID")
        return value


_NO_TOPIC_ID = bytes(16)

_RESPONSE_SCHEMA = Schema(
    ("throttle_time_ms", Int32),
    ("brokers", CompactArray(("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
                             ("rack", CompactString("utf-8")), ("tags", TaggedFields))),
    ("cluster_id", CompactString("utf-8")),
    ("controller_id", Int32),
    ("topics", CompactArray(
        ("error_code", Int16), ("name", CompactString("utf-8")), ("topic_id", _Uuid), ("is_internal", Boolean),
        ("partitions", CompactArray(
            ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32), ("leader_epoch", Int32),
            ("replica_nodes", CompactArray(Int32)), ("isr_nodes", CompactArray(Int32)),
            ("offline_replicas", CompactArray(Int32)), ("tags", TaggedFields))),
        ("topic_authorized_operations", Int32), ("tags", TaggedFields))),
    ("tags", TaggedFields),
)
_REQUEST_SCHEMA = Schema(
    ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
    ("allow_auto_topic_creation", Boolean),
    ("include_topic_authorized_operations", Boolean),
    ("tags", TaggedFields),
)


class _MetadataResponse_v11(Response):  # noqa: N801 (aiokafka's naming of protocol versions)
    API_KEY = 3
    API_VERSION = 11
    SCHEMA = _RESPONSE_SCHEMA


class _MetadataResponse_v12(Response):  # noqa: N801
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = _RESPONSE_SCHEMA


class _MetadataRequest_v11(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 11
    RESPONSE_TYPE = _MetadataResponse_v11
    SCHEMA = _REQUEST_SCHEMA


class _MetadataRequest_v12(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = _MetadataResponse_v12
    SCHEMA = _REQUEST_SCHEMA


_Struct: TypeAlias = _MetadataRequest_v11 | _MetadataRequest_v12


class _TopicMetadataRequest(Request[_Struct]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[_Struct]) -> _Struct:
        # Never auto-create: asking about a topic must not make it (with the broker's defaults).
        return request_struct_class([(_NO_TOPIC_ID, name, {}) for name in self.topics], False, False, {})


@dataclass(frozen=True)
class TopicIdentity:
    """Which topic, on which cluster: what stored offsets belong to."""

    cluster_id: str
    topic_id: str

    def __str__(self) -> str:
        return f"cluster {self.cluster_id} topic id {self.topic_id}"

    def key(self) -> str:
        """The form stores keep."""
        return f"{self.cluster_id}/{self.topic_id}"

    @classmethod
    def from_key(cls, key: str) -> TopicIdentity:
        cluster_id, _, topic_id = key.partition("/")
        return cls(cluster_id, topic_id)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    topic_id: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True)
class ClusterTopics:
    cluster_id: str
    topics: dict[str, TopicInfo]  # only those that exist

    def identity(self, topic: str) -> TopicIdentity | None:
        info = self.topics.get(topic)
        return None if info is None else TopicIdentity(self.cluster_id, info.topic_id)


def _topic_id(raw: bytes) -> str:
    # Kafka prints topic ids as URL-safe base64 without padding (kafka-topics --describe).
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse(response: Any) -> ClusterTopics:
    topics: dict[str, TopicInfo] = {}
    for error_code, name, topic_id, _internal, partitions, _operations, _tags in response.topics:
        if error_code == UnknownTopicOrPartitionError.errno:
            continue
        if error_code != 0:
            raise KafkaUnavailable(f"Kafka answered error {error_code} about topic {name}")
        replicas = max((len(partition[4]) for partition in partitions), default=0)
        topics[name] = TopicInfo(name, _topic_id(topic_id), len(partitions), replicas)
    return ClusterTopics(response.cluster_id or "", topics)


class TopicMetadata:
    """One admin connection asked again and again (a consumer waiting for its topic)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=15000)

    async def __aenter__(self) -> TopicMetadata:
        await start_client(self._admin, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def topics(self, names: Iterable[str]) -> ClusterTopics:
        try:
            # The admin client's own send: it picks a broker and negotiates the version.
            response = await self._admin._send_request(_TopicMetadataRequest(list(names)))
        except NotImplementedError:
            raise TopicIdsUnsupported(f"Kafka at {self.settings.kafka_bootstrap_servers} does not report topic ids "
                                   "(Metadata v11, Kafka 3.0 or later, is needed)") from None
        except KafkaError as error:
            raise KafkaUnavailable(f"could not read topic metadata from Kafka: {describe_error(error)}") from None
        return _parse(response)


async def describe_topics(settings: Settings, names: Iterable[str], *, wait_seconds: float = 0.0) -> ClusterTopics:
    """``wait_seconds``: how long to ask again while some of ``names`` are missing (a topic just
    created reaches every broker's metadata a moment later)."""
    names = list(names)
    deadline = time.monotonic() + wait_seconds
    async with TopicMetadata(settings) as metadata:
        while True:
            found = await metadata.topics(names)
            if set(names) <= set(found.topics) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.2)
