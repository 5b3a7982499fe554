"""A Confluent-compatible schema registry: registering our schema, resolving writer ids.

Spoken over the Confluent REST API (``/subjects``, ``/schemas/ids``, ``/config``,
``/compatibility``), which Confluent Schema Registry serves at its root and Apicurio
Registry 3 under ``/apis/ccompat/v7``: ``PASSPOST_SCHEMA_REGISTRY_URL`` names that base.

The subject is ``<events topic>-value`` (TopicNameStrategy, what Kafka Connect, ksqlDB and
the Confluent serdes look up by default). Its compatibility level is FULL_TRANSITIVE: the
ingress is upgraded independently of every consumer (ours and tools written elsewhere),
so a new schema must be readable by consumers still on any older one (forward) and
consumers on the new one must read every event already on the topic, back to its first
(backward, transitive: a rebuild replays from offset 0).

Nothing here talks to the registry per record: the ingress learns its id once at start,
a consumer asks once per id it has not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Self

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from passpost.backoff import Backoff, Retry

from .codec import DEFAULT_RESOLVER, SCHEMA_TEXT, ParsedSchema, parse_writer_schema
from .registry_errors import RegistryRefused, RegistryUnavailable

__all__ = ["COMPATIBILITY", "RegistryClient", "RegistryConfig", "RegistryMetrics", "RegistryRefused",
           "RegistryResolver", "RegistryUnavailable", "RegistryWatch", "ensure_registered", "register",
           "schema_text", "subject_for"]

log = logging.getLogger("passpost.schema_registry")

COMPATIBILITY: Final = "FULL_TRANSITIVE"
_CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
# How often the ingress asks whether the registry still answers (for the metric and the log).
WATCH_SECONDS: Final = 30.0
_RETRY_MAX_SECONDS: Final = 30.0


def schema_text() -> str:
    """``pass_postback.avsc`` exactly as kept in the repository: what gets registered."""
    return SCHEMA_TEXT


def subject_for(topic: str) -> str:
    """TopicNameStrategy: the subject of a topic's values."""
    return f"{topic}-value"


@dataclass(frozen=True)
class RegistryConfig:
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> RegistryConfig | None:
        """None when ``PASSPOST_SCHEMA_REGISTRY_URL`` is unset: no registry, single-object encoding."""
        if not settings.schema_registry_url:
            return None
        return cls(settings.schema_registry_url, settings.schema_registry_username,
                   settings.schema_registry_password, settings.schema_registry_ca_file)

    @property
    def shown_url(self) -> str:
        """The URL for messages: any ``user:password@`` in it left out."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RegistryClient:
    """The few calls passpost needs, each a one-line error when it fails."""

    def __init__(self, config: RegistryConfig, timeout: float = 5.0) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_file:
            verify = ssl.create_default_context(cafile=config.ca_file)
        auth = (config.username, config.password) if config.username and config.password else None
        self._http = httpx.AsyncClient(base_url=config.url.rstrip("/"), auth=auth, verify=verify, timeout=timeout,
                                       headers={"Accept": _CONTENT_TYPE})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        where = self.config.shown_url
        try:
            response = await self._http.request(
                method, path, json=body, headers={"Content-Type": _CONTENT_TYPE} if body is not None else None)
        except httpx.HTTPError as error:
            raise RegistryUnavailable(f"schema registry {where} unreachable: "
                                      f"{type(error).__name__}: {error or 'no answer'}") from None
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise RegistryRefused(f"schema registry {where} refused the credentials (HTTP {response.status_code}; "
                                  "PASSPOST_SCHEMA_REGISTRY_USERNAME/_PASSWORD)")
        if response.status_code >= 400:
            raise RegistryRefused(f"schema registry {where} answered HTTP {response.status_code} to {method} "
                                  f"{path}: {_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise RegistryRefused(f"schema registry {where} answered {method} {path} with something not JSON "
                                  "(is the URL the Confluent-compatible API, e.g. .../apis/ccompat/v7?)") from None

    async def subjects(self) -> list[str]:
        """Every subject: a cheap call that proves the registry answers and accepts us."""
        return list(await self._call("GET", "/subjects"))

    async def lookup(self, subject: str, schema: str) -> int | None:
        """The id of ``schema`` under ``subject``, or None when it is not registered there."""
        found = await self._call("POST", f"/subjects/{_quote(subject)}", {"schema": schema, "schemaType": "AVRO"},
                                 missing_ok=True)
        return None if found is None else int(found["id"])

    async def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (the registry's compatibility rule applies); its id, new or existing."""
        answer = await self._call("POST", f"/subjects/{_quote(subject)}/versions",
                                  {"schema": schema, "schemaType": "AVRO"})
        return int(answer["id"])

    async def set_compatibility(self, subject: str, level: str = COMPATIBILITY) -> None:
        await self._call("PUT", f"/config/{_quote(subject)}", {"compatibility": level})

    async def compatibility(self, subject: str) -> str | None:
        """The subject's own level, or None when it has none (the registry's global default applies)."""
        answer = await self._call("GET", f"/config/{_quote(subject)}", missing_ok=True)
        return None if answer is None else str(answer.get("compatibilityLevel") or answer.get("compatibility"))

    async def versions(self, subject: str) -> list[int]:
        answer = await self._call("GET", f"/subjects/{_quote(subject)}/versions", missing_ok=True)
        return [] if answer is None else [int(v) for v in answer]

    async def is_compatible(self, subject: str, schema: str, version: str = "latest") -> tuple[bool, list[str]]:
        """The registry's verdict on ``schema`` against ``version`` of the subject, under the subject's level
        (a transitive level compares with every version); the registry's reasons when it says no."""
        answer = await self._call("POST", f"/compatibility/subjects/{_quote(subject)}/versions/{version}?verbose=true",
                                  {"schema": schema, "schemaType": "AVRO"})
        return bool(answer["is_compatible"]), [str(m) for m in answer.get("messages") or []]

    async def schema(self, schema_id: int) -> str | None:
        """The schema text of a global id, or None when the registry has no such id."""
        answer = await self._call("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        return None if answer is None else str(answer["schema"])


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _message(response: httpx.Response) -> str:
    try:
        text = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(text.split())[:300] or "(no message)"


class RegistryMetrics:
    """Whether the registry answers, for the ingress's and each consumer's /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("passpost_schema_registry_up",
                        "1 while the schema registry answers, 0 while it does not (cached schema ids keep working).",
                        registry=registry)
        self.errors = Counter("passpost_schema_registry_errors",
                              "Calls to the schema registry that failed, by reason.", ["reason"], registry=registry)
        self.up.set(1)

    def failed(self, error: RegistryUnavailable) -> None:
        self.up.set(0)
        self.errors.labels("refused" if isinstance(error, RegistryRefused) else "unreachable").inc()


# --- the ingress: register (or find) at start, then only watch ------------------------------------


async def ensure_registered(config: RegistryConfig, topic: str, *, auto_register: bool) -> int:
    """The id of our schema under ``<topic>-value``: found there, else registered (and the subject's
    compatibility level set) when ``auto_register``. Raises RegistryUnavailable/RegistryRefused."""
    subject = subject_for(topic)
    text = schema_text()
    async with RegistryClient(config) as client:
        found = await client.lookup(subject, text)
        if found is not None:
            return found
        if not auto_register:
            raise RegistryRefused(f"the event schema is not registered under subject {subject} at "
                                  f"{config.shown_url} and PASSPOST_SCHEMA_REGISTRY_AUTO_REGISTER is false: "
                                  "run `passpost schema register`")
        return await register(client, subject, text)


async def register(client: RegistryClient, subject: str, text: str) -> int:
    """Set the subject's level first, so that this very registration is checked against it."""
    await client.set_compatibility(subject)
    return await client.register(subject, text)


class RegistryWatch:
    """Asks every ``WATCH_SECONDS`` whether our id is still there; only says so (metric, one log line
    per change): the ingress keeps writing with the id it learnt at start either way."""

    def __init__(self, config: RegistryConfig, topic: str, schema_id: int, metrics: RegistryMetrics,
                 interval: float = WATCH_SECONDS) -> None:
        self._config, self._subject, self._id = config, subject_for(topic), schema_id
        self._metrics, self._interval = metrics, interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        text = schema_text()
        healthy = True
        async with RegistryClient(self._config) as client:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    await client.lookup(self._subject, text)
                except RegistryUnavailable as error:
                    self._metrics.failed(error)
                    if healthy:
                        log.warning("%s; still writing with the cached schema id %d", error, self._id)
                    healthy = False
                    continue
                self._metrics.up.set(1)
                if not healthy:
                    log.info("schema registry %s answers again", self._config.shown_url)
                healthy = True


# --- consumers: writer schemas by id, cached ---------------------------------------------------------


class RegistryResolver:
    """A ``SchemaResolver`` over the registry. ``decode`` is synchronous and per record, so it only
    reads the cache; ``learn`` fills it, one HTTP call per id never seen, before a batch decodes."""

    def __init__(self, config: RegistryConfig, topic: str, metrics: RegistryMetrics | None = None) -> None:
        self.config = config
        self._subject = subject_for(topic)
        self._metrics = metrics
        self._by_id: dict[int, ParsedSchema] = {}
        self._client = RegistryClient(config)

    async def start(self) -> None:
        """Prove the registry answers (RegistryUnavailable otherwise: the consumer does not start) and
        learn our own schema's id when it is registered."""
        await self._client.subjects()
        own = await self._client.lookup(self._subject, schema_text())
        if own is not None:
            self._by_id[own] = parse_writer_schema(schema_text())

    async def close(self) -> None:
        await self._client.aclose()

    def by_fingerprint(self, fp: bytes) -> ParsedSchema | None:
        return DEFAULT_RESOLVER.by_fingerprint(fp)

    def by_id(self, schema_id: int) -> ParsedSchema | None:
        return self._by_id.get(schema_id)

    async def learn(self, values: Iterable[bytes | None], stopping: asyncio.Event) -> bool:
        """Fetch the writer schema of every Confluent-framed value whose id is not cached. While the
        registry does not answer, retry (metric, log line); False if ``stopping`` is set meanwhile.
        An id the registry does not have stays unknown: ``decode`` then dead-letters the record."""
        wanted = {int.from_bytes(v[1:5], "big") for v in values if v and len(v) >= 5 and v[0] == 0}
        wanted -= self._by_id.keys()
        retry = Retry(Backoff(initial=0.1, cap=_RETRY_MAX_SECONDS), stopping)
        for schema_id in sorted(wanted):
            while True:
                try:
                    text = await self._client.schema(schema_id)
                    break
                except RegistryUnavailable as error:
                    if self._metrics is not None:
                        self._metrics.failed(error)
                    delay = retry.next_delay()
                    if delay is None:
                        return False
                    log.warning("%s; events with schema id %d wait (cached ids keep decoding); retrying in "
                                "%.1f s", error, schema_id, delay)
                    if not await retry.wait(delay):
                        return False
            if self._metrics is not None:
                self._metrics.up.set(1)
            if text is None:
                continue
            try:
                self._by_id[schema_id] = parse_writer_schema(text)
            except Exception as error:  # noqa: BLE001 (fastavro's parse errors have no common base)
                log.warning("schema id %d from the registry is not an Avro schema fastavro reads: %s",
                            schema_id, error)
        return True
