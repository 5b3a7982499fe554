"""A consumer's dead-letter topic: the records it cannot or will not write, byte for byte.

Each dead letter is the record's value and key as they were, with headers saying why
(``error``: ``undecodable``, ``rejected`` or ``poison``; ``detail``) and where it came
from (``topic``, ``partition``, ``offset``). ``send`` returns once the broker has
acknowledged it (acks=all, idempotent): only then may the record's offset move.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from passpost.consumers.runtime.health import ConsumerMetrics
from passpost.consumers.runtime.refusals import Refusals
from passpost.consumers.runtime.tracing import sink_span
from passpost.errors import describe_error
from passpost.kafka import KafkaUnavailable, client_options, create_topics, start_client
from passpost.settings import Settings
from passpost.topic_metadata import describe_topics
from passpost.tracing import TRACEPARENT, TRACESTATE

log = logging.getLogger("passpost.consumer")


def dead_letter_topic(name: str) -> str:
    return f"pass-postbacks.dlq.{name}.v1"


class DeadLetters:
    def __init__(self, settings: Settings, name: str, refusals: Refusals, metrics: ConsumerMetrics) -> None:
        self.settings = settings
        self.name = name
        self.refusals = refusals
        self.metrics = metrics
        self.topic = dead_letter_topic(name)
        self._producer: AIOKafkaProducer | None = None  # made in start(): aiokafka wants the running loop

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**client_options(self.settings), acks="all", enable_idempotence=True)
        await start_client(self._producer, self.settings)
        await self._ensure_topic()

    async def _ensure_topic(self) -> None:
        try:
            # Where ACLs forbid creating topics the platform creates it (deploy/k8s does): asking
            # first keeps a refused creation from being reported for a topic that is there.
            if self.topic in (await describe_topics(self.settings, [self.topic])).topics:
                return
            await create_topics(self.settings, [self.topic])
        except (KafkaUnavailable, KafkaError) as error:
            log.warning("consumer %s: %s does not exist and could not be created (%s); dead letters wait until it "
                        "does", self.name, self.topic, describe_error(error))

    async def keep(self, record: ConsumerRecord, error: str, detail: str) -> None:
        """Send until the broker acknowledges (the record's offset may move only after);
        ``BatchAbandoned`` when stopped or revoked first."""
        with sink_span(f"send {self.topic}", "producer", {
                "messaging.system": "kafka", "messaging.operation.type": "send", "messaging.operation.name": "send",
                "messaging.destination.name": self.topic, "error.type": error}):
            await self.refusals.persist(lambda: self.send(record, error, detail), (KafkaError,),
                                        "dead letter not kept")
        self.metrics.dead_letter(error)
        log.warning("consumer %s: %s/%d@%d to %s: %s", self.name, record.topic, record.partition, record.offset,
                    self.topic, error)

    async def send(self, record: ConsumerRecord, error: str, detail: str) -> None:
        """One attempt; ``KafkaError`` when the broker did not acknowledge."""
        assert self._producer is not None, "send() before start()"
        headers = [("error", error.encode()), ("detail", detail.encode()[:1000]),
                   ("topic", record.topic.encode()), ("partition", str(record.partition).encode()),
                   ("offset", str(record.offset).encode())]
        # The record's own trace context stays with it (the ingress's request that made it).
        headers += [(name, value) for name, value in record.headers or () if name in (TRACEPARENT, TRACESTATE)]
        await self._producer.send_and_wait(self.topic, record.value, key=record.key, headers=headers)

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
