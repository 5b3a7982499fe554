"""Every setting passpost reads, in one place.

Settings come from ``PASSPOST_*`` environment variables. Each one is declared once, as a
field of the class of the component that reads it (``KafkaSettings``, ``IngressSettings``,
...): its type, parser, default, a sentence for the README table and whether its value is a
secret. ``Settings`` holds every component's fields, and ``SETTINGS`` lists the same
declarations, so the table, validation and the ``Settings`` object cannot drift apart.
A secret's value never appears in a repr, so neither in a log line nor a traceback.

A bad value raises ``SettingsError`` whose message is one line naming the variable; the CLI
prints it and exits with status 2. How a value's text is read (ports, durations, DSNs, ...) is
``passpost.setting_values``; which settings there are, here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from passpost import setting_values as values
from passpost.setting_values import SettingsError as SettingsError  # raised by load() too: importable from here

PREFIX = "PASSPOST_"


@dataclass(frozen=True)
class Setting:
    """One ``PASSPOST_*`` variable: how to parse it, its default and what it does."""

    field: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False
    component: str = ""

    @property
    def env(self) -> str:
        return PREFIX + self.field.upper()

    @property
    def shown_default(self) -> str:
        if self.default is None or self.default == ():
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)

    def shown(self, value: Any) -> str:
        """``value`` as a repr or a log line may show it: a secret's only as set or not."""
        if self.secret and value:
            return HIDDEN
        return repr(value)


# What a repr shows in place of a secret that is set.
HIDDEN = "<hidden>"

T = TypeVar("T")


@dataclass(frozen=True)
class _Declaration:
    parse: Callable[[str], Any]
    help: str
    secret: bool


def _declare(parse: Callable[[str], T], default: T, help: str, *, secret: bool = False) -> T:
    """A setting declared as a field of its component: its parser, default, README sentence
    and whether its value is a secret. Typed as its value, which is what the field holds."""
    declaration = _Declaration(parse, help, secret)
    return dataclasses.field(default=default, metadata={_Declaration: declaration})


class _Component:
    """What every group of settings shares: a repr built from the declarations, in which a
    secret's value never appears (so neither does it in a log line or a traceback)."""

    def __repr__(self) -> str:
        names = {field.name for field in dataclasses.fields(self)}  # type: ignore[arg-type]
        shown = ", ".join(f"{setting.field}={setting.shown(getattr(self, setting.field))}"
                          for setting in SETTINGS if setting.field in names)
        return f"{type(self).__name__}({shown})"


# One class per component, holding the settings it reads, in the order of the README's table.
# Each field is the whole declaration of its setting; ``SETTINGS`` and ``Settings`` are built
# from them.


@dataclass(frozen=True, repr=False)
class KafkaSettings(_Component):
    """How every Kafka client connects: the ingress's producer, the consumers, the admin commands."""

    kafka_bootstrap_servers: str = _declare(
        values.bootstrap_servers, "localhost:9092", "Kafka brokers, comma-separated `host:port`.")
    kafka_client_id: str = _declare(
        values.string, "passpost", "Client id sent to Kafka (shows in broker logs and quotas).")
    kafka_compression: str = _declare(
        values.choice("lz4", "zstd", "gzip", "snappy", "none"), "lz4", "Producer compression codec.")
    kafka_linger_ms: int = _declare(
        values.non_negative_int, 0,
        "How long the producer waits to fill a batch. 0 suits the ingress: records of concurrent "
        "requests share a batch anyway while the previous one is in flight.")
    kafka_security_protocol: str = _declare(
        values.choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "PLAINTEXT",
        "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`, for producer, consumers and admin alike.")
    kafka_sasl_mechanism: str = _declare(
        values.choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SCRAM-SHA-512",
        "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (Strimzi's `KafkaUser` uses SCRAM-SHA-512).")
    kafka_sasl_username: str | None = _declare(
        values.string, None, "SASL user name (required with `SASL_*`).")
    kafka_sasl_password: str | None = _declare(
        values.string, None, "SASL password (required with `SASL_*`).", secret=True)
    kafka_ssl_ca_file: str | None = _declare(
        values.readable_file, None,
        "CA bundle (PEM) that signed the brokers' certificates; the system's CAs when unset.")
    kafka_ssl_cert_file: str | None = _declare(
        values.readable_file, None, "Client certificate (PEM) for mutual TLS.")
    kafka_ssl_key_file: str | None = _declare(
        values.readable_file, None, "Private key (PEM) of the client certificate.")


@dataclass(frozen=True, repr=False)
class TopicSettings(_Component):
    """The topics every component writes or reads, and how ``passpost topics`` creates them."""

    events_topic: str = _declare(values.topic, "pass-postbacks.v1", "Topic of the Avro events.")
    dead_letter_topic: str = _declare(
        values.topic, "pass-postbacks.dlq.v1",
        "Topic of rejected request bodies, byte for byte, with the reason in headers.")
    topic_partitions: int = _declare(values.positive_int, 6, "Partitions for `passpost topics`.")
    topic_replication_factor: int = _declare(
        values.positive_int, 1, "Replication factor for `passpost topics` (use 3 in production).")


@dataclass(frozen=True, repr=False)
class SchemaRegistrySettings(_Component):
    """The schema registry the events' schema is registered in and read from."""

    schema_registry_url: str | None = _declare(
        values.http_url, None,
        "Confluent-compatible schema registry (e.g. `http://apicurio:8080/apis/ccompat/v7`). Set, events are "
        "written in the Confluent wire format under the subject `<events topic>-value`; unset, Avro "
        "single-object encoding.")
    schema_registry_username: str | None = _declare(
        values.string, None, "User name for the schema registry (HTTP Basic).")
    schema_registry_password: str | None = _declare(
        values.string, None, "Password for the schema registry (HTTP Basic).", secret=True)
    schema_registry_ca_file: str | None = _declare(
        values.readable_file, None,
        "CA bundle (PEM) that signed the schema registry's certificate; the system's CAs when unset.")
    schema_registry_auto_register: bool = _declare(
        values.boolean, True,
        "The ingress registers the event schema at start when the registry lacks it; false where only "
        "`passpost schema register` may (the ingress then refuses to start until it is registered).")


@dataclass(frozen=True, repr=False)
class IngressSettings(_Component):
    """``passpost serve``: where it listens, whom it lets in, what it accepts and how long it waits."""

    host: str = _declare(values.string, "127.0.0.1", "Address `passpost serve` listens on.")
    workers: int = _declare(
        values.positive_int, 1,
        "Processes of `passpost serve` on its one port (each with its own Kafka producer; one `/metrics` adds "
        "them up). One per core; not with `PASSPOST_SPOOL_DIR`.")
    port: int = _declare(values.port, 8000, "Port `passpost serve` listens on.")
    server: str = _declare(
        values.choice("protocol", "uvicorn"), "protocol",
        "HTTP server of `passpost serve`: `protocol`, the ingress's own `asyncio.Protocol` over httptools that "
        "takes `POST /postbacks/passes` past ASGI (BENCHMARKS.md, issue 22), or `uvicorn` (httptools, ASGI); "
        "the same connection limits either way.")
    ingest_tokens: tuple[str, ...] = _declare(
        values.tokens, (), "Accepted ingest tokens, comma-separated; several at once allow rotation.", secret=True)
    ingest_open: bool = _declare(
        values.boolean, False, "Run the ingress without any token (refused unless set to true).")
    max_body_bytes: int = _declare(values.positive_int, 1024 * 1024, "Largest request body accepted (413 above).")
    known_origins: tuple[str, ...] = _declare(
        values.names, (),
        "ORIGIN values counted by name in `passpost_events_produced_total{origin}`, comma-separated, besides the "
        "vendor's documented `GENERATE_PASS`; any other origin is counted as `other`.")
    max_items: int = _declare(
        values.positive_int, 1000,
        "Most postbacks (items) one request may hold; 413 `too_many_items` above, body dead-lettered.")
    max_request_line_bytes: int = _declare(
        values.int_at_least(256), 8 * 1024,
        "Longest request line (method, path and query) accepted; 414 above, before credentials.")
    max_header_bytes: int = _declare(
        values.int_at_least(1024), 16 * 1024,
        "Most bytes of request headers accepted; 431 above, before credentials and without buffering more.")
    max_header_count: int = _declare(values.positive_int, 100, "Most request headers accepted; 431 above.")
    header_timeout_seconds: float = _declare(
        values.seconds, 10.0,
        "Time a client has to send the request line and headers; then 408 and the connection is closed.")
    body_timeout_seconds: float = _declare(
        values.seconds, 30.0,
        "Time a client has to send the body once its headers are in; then 408 and the connection is closed.")
    max_connections: int = _declare(
        values.positive_int, 256,
        "Most open client connections; one more is answered 503 and closed (each may hold a body in memory).")
    produce_timeout_seconds: float = _declare(
        values.seconds, 5.0,
        "How long a request waits for Kafka to confirm before answering 503 (the vendor gives up after 10 s).")
    retry_after_seconds: int = _declare(values.positive_int, 30, "The `Retry-After` value sent with a 503.")


@dataclass(frozen=True, repr=False)
class SpoolSettings(_Component):
    """``passpost serve`` when Kafka does not keep up or the process is told to stop: the spool and the drain."""

    spool_dir: str | None = _declare(
        values.string, None,
        "Directory of the durable local spool: a request Kafka does not confirm in time is kept there, "
        "answered 200 once on disk, and forwarded in order when Kafka is back (README, The spool). Unset: 503.")
    spool_max_bytes: int = _declare(
        values.int_at_least(64 * 1024), 1024 * 1024 * 1024,
        "Most bytes the spool may hold; a request that does not fit is answered 503 with `Retry-After`.")
    spool_drain_seconds: float = _declare(
        values.seconds, 10.0,
        "On SIGTERM, how long the forwarder keeps sending spooled records to Kafka before exiting; the rest "
        "stays in the spool for the next start.")
    shutdown_timeout_seconds: float = _declare(
        values.seconds, 20.0, "On SIGTERM, how long in-flight requests get to finish before the producer flushes.")


@dataclass(frozen=True, repr=False)
class ConsumerSettings(_Component):
    """``passpost consume NAME``: the runtime every consumer runs on."""

    consumer_group: str | None = _declare(
        values.string, None, "Consumer group of `passpost consume NAME`; `passpost-NAME` when unset.")
    consumer_port: int = _declare(values.port, 9100, "Port of a consumer's `/healthz`, `/readyz` and `/metrics`.")
    consumer_batch_size: int = _declare(
        values.positive_int, 5000, "Most events a consumer hands its sink in one batch.")
    consumer_batch_max_bytes: int = _declare(
        values.positive_int, 8 * 1024 * 1024,
        "Most bytes fetched for one batch (bounds a consumer's memory whatever the backlog).")
    consumer_retry_max_seconds: float = _declare(
        values.seconds, 30.0,
        "Longest wait between retries of a batch the sink refused (the wait doubles from 0.1 s up to this).")
    consumer_stall_seconds: float = _declare(
        values.seconds, 60.0,
        "A consumer whose sink has refused batches for longer than this answers `/readyz` with 503 (stalled).")


@dataclass(frozen=True, repr=False)
class AnalyticsSettings(_Component):
    """``passpost consume analytics`` and ``passpost report``: the analytics store."""

    analytics_dsn: str = _declare(
        values.analytics_dsn, "duckdb:///data/analytics.duckdb",
        "Analytics store: `duckdb:///path` (relative to the working directory) or `postgresql://...`.")
    analytics_reference_value: str = _declare(
        values.choice("hash", "keep", "drop"), "hash",
        "`reference_value` (an email or phone) in the analytics store: keyed `hash` (HMAC-SHA256), `keep` "
        "as sent, or `drop`.")
    analytics_hash_key: str | None = _declare(
        values.string, None,
        "Key of the `hash` mode; when unset the store generates one once and keeps it in its `passpost_meta` "
        "table.", secret=True)


@dataclass(frozen=True, repr=False)
class LakehouseSettings(_Component):
    """``passpost consume lakehouse``, ``passpost lakehouse maintain`` and ``passpost report``: the Iceberg table."""

    iceberg_catalog_uri: str | None = _declare(
        values.iceberg_catalog_uri, None,
        "Iceberg catalog of the lakehouse table: a SQL catalog (`sqlite:///path`, `postgresql://...`) or a REST "
        "catalog (`https://...`; its token or credential from `PYICEBERG_CATALOG__<NAME>__*`). Required by "
        "`passpost consume lakehouse`; set, `passpost report` reads the table too.", secret=True)
    iceberg_catalog_name: str = _declare(
        values.string, "passpost", "Name of the catalog (Spark and Trino name it the same way to read the same table).")
    iceberg_warehouse: str | None = _declare(
        values.iceberg_warehouse, None,
        "Where the table's files go: `file:///path` or `s3://bucket/prefix` (credentials, region and endpoint "
        "from the `AWS_*` variables, or those the catalog vends). Required with a SQL catalog.")
    iceberg_table: str = _declare(
        values.iceberg_table, "passpost.pass_postbacks", "The table, `namespace.table`; created on first start.")
    iceberg_commit_seconds: float = _declare(
        values.seconds, 60.0,
        "Longest time events wait in the lakehouse consumer before they are committed (one snapshot, one file "
        "per day partition): fewer, larger files on a quiet day.")
    iceberg_commit_rows: int = _declare(
        values.positive_int, 100_000,
        "Events that make the lakehouse consumer commit before `PASSPOST_ICEBERG_COMMIT_SECONDS`.")


@dataclass(frozen=True, repr=False)
class AlertSettings(_Component):
    """``passpost consume alerts``: where alerts go, which rules make them, how often they repeat."""

    alertmanager_url: str | None = _declare(
        values.http_url, None,
        "Alertmanager to send alerts to (e.g. `http://alertmanager:9093`; they go to `/api/v2/alerts`).")
    alert_webhook_url: str | None = _declare(
        values.http_url, None, "URL that receives each alert notification as JSON shaped like Alertmanager's webhook.")
    alert_webhook_format: str = _declare(
        values.choice("alertmanager", "slack"), "alertmanager",
        "`alertmanager` (its webhook payload, version 4) or `slack` (a `{\"text\": ...}` body).")
    alert_log: bool = _declare(
        values.boolean, True, "Also log every alert notification (always on when no other sink is set).")
    alert_rules_file: str | None = _declare(
        values.readable_file, None,
        "TOML or YAML (`.yaml`/`.yml`) alert rules tried before the built-in ones (README, Alerts).")
    alert_repeat_seconds: float = _declare(
        values.seconds, 60.0,
        "Shortest time between two notifications of one firing alert; a repeat is sent only when its count grew.")
    alert_resolve_after_seconds: float = _declare(
        values.seconds, 300.0,
        "An alert resolves, and the resolution is sent, when its failures stopped for this long.")
    alert_delivery_deadline_seconds: float = _declare(
        values.seconds, 30.0,
        "How long a sink retries (backoff from 0.2 s doubling to 5 s) before the batch fails and is retried "
        "whole.")
    alert_first_start_lookback_seconds: float = _declare(
        values.seconds, 3600.0,
        "On its first start (no state file, nothing committed) the alerts consumer reads events from this far "
        "back, not the topic's whole retention.")
    alert_state_file: str = _declare(
        values.string, "data/alerts-state.json",
        "The alerts consumer's local store: open alerts and the offsets they cover (keep it on a volume).")


@dataclass(frozen=True, repr=False)
class TracingSettings(_Component):
    """Tracing itself is configured by OpenTelemetry's own `OTEL_*` variables (README, Tracing); this is
    what passpost adds to it."""

    trace_url_template: str | None = _declare(
        values.trace_url_template, None,
        "Link an alert's annotations give to the trace of its first event, `{trace_id}` replaced (e.g. "
        "`https://jaeger.example/trace/{trace_id}`); without it they name the trace id alone.")


@dataclass(frozen=True, repr=False)
class LogSettings(_Component):
    """How every command logs."""

    log_format: str = _declare(
        values.choice("text", "json"), "text", "`text` for people, `json` for one JSON object per line.")
    log_level: str = _declare(values.choice("debug", "info", "warning", "error"), "info", "Lowest level logged.")


@dataclass(frozen=True, repr=False)
class Settings(KafkaSettings, TopicSettings, SchemaRegistrySettings, IngressSettings, SpoolSettings,
               ConsumerSettings, AnalyticsSettings, LakehouseSettings, AlertSettings, TracingSettings,
               LogSettings):
    """Every setting, one attribute each; an instance of each component's class as well."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# The components in the order of their bases above, which is the order of the README's table.
COMPONENTS: tuple[type[_Component], ...] = Settings.__bases__


def _component_name(component: type[_Component]) -> str:
    """``SchemaRegistrySettings`` -> ``schema registry``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", component.__name__.removesuffix("Settings")).lower()


def _declarations() -> tuple[Setting, ...]:
    declared = []
    for component in COMPONENTS:
        for field in dataclasses.fields(component):  # type: ignore[arg-type]
            declaration: _Declaration = field.metadata[_Declaration]
            declared.append(Setting(field.name, declaration.parse, field.default, declaration.help,
                                    declaration.secret, _component_name(component)))
    return tuple(declared)


SETTINGS: tuple[Setting, ...] = _declarations()


def defaults() -> Settings:
    """Settings with every default, ignoring the environment."""
    return Settings()


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``PASSPOST_*`` variable; raise ``SettingsError`` on the first bad one."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is None:
            values[setting.field] = setting.default
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as error:
            raise SettingsError(f"{setting.env}: {error}") from None
    loaded = Settings(**values)
    _check_consistency(loaded)
    return loaded


def _check_consistency(settings: Settings) -> None:
    """Settings that are only wrong together, named so the user knows which to add."""
    if settings.kafka_security_protocol.startswith("SASL_"):
        for field in ("kafka_sasl_username", "kafka_sasl_password"):
            if getattr(settings, field) is None:
                raise SettingsError(
                    f"{PREFIX}{field.upper()}: required when {PREFIX}KAFKA_SECURITY_PROTOCOL is "
                    f"{settings.kafka_security_protocol}"
                )
    if (settings.kafka_ssl_cert_file is None) != (settings.kafka_ssl_key_file is None):
        missing = "KAFKA_SSL_KEY_FILE" if settings.kafka_ssl_key_file is None else "KAFKA_SSL_CERT_FILE"
        raise SettingsError(f"{PREFIX}{missing}: a client certificate and its key go together")
    if (settings.schema_registry_username is None) != (settings.schema_registry_password is None):
        missing = "USERNAME" if settings.schema_registry_username is None else "PASSWORD"
        raise SettingsError(f"{PREFIX}SCHEMA_REGISTRY_{missing}: a schema registry user name and password go together")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``PASSPOST_*`` names that no setting declares: usually a typo worth a warning."""
    environ = os.environ if environ is None else environ
    known = {setting.env for setting in SETTINGS}
    return sorted(name for name in environ if name.startswith(PREFIX) and name not in known)


def require_credentials(settings: Settings) -> None:
    """The ingress never runs open by accident: with no token configured it refuses to start
    unless ``PASSPOST_INGEST_OPEN`` says to run without one."""
    if not settings.ingest_tokens and not settings.ingest_open:
        raise SettingsError(
            f"{PREFIX}INGEST_TOKENS: no token configured; set one, or set {PREFIX}INGEST_OPEN=true to run without"
        )


def markdown_table() -> str:
    """The README's configuration table, generated from ``SETTINGS``."""
    lines = ["| Variable | Default | What it does |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = f"`{setting.shown_default}`" if setting.shown_default else "(none)"
        lines.append(f"| `{setting.env}` | {default} | {setting.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
