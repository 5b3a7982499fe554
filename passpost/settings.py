"""Every setting passpost reads, in one place.

Settings come from ``PASSPOST_*`` environment variables. Each one is declared once
in ``SETTINGS`` with its parser, default and a sentence for the README table, so the
table, validation and the ``Settings`` object cannot drift apart. A bad value raises
``SettingsError`` whose message is one line naming the variable; the CLI prints it and
exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from passpost.errors import ConfigurationError

PREFIX = "PASSPOST_"


class SettingsError(ConfigurationError, ValueError):
    """A setting has a value passpost cannot use. ``str()`` is one line naming it."""


def _string(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
        if value < minimum:
            raise ValueError(f"{raw!r} must be at least {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError(f"{raw!r} is not a TCP port (1-65535)")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{raw!r} must be a positive number of seconds")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def _choice(*choices: str) -> Callable[[str], str]:
    """One of ``choices``, matched case-insensitively and returned as spelled there."""
    canonical = {choice.lower(): choice for choice in choices}

    def parse(raw: str) -> str:
        value = canonical.get(raw.strip().lower())
        if value is None:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return value

    return parse


# A hostname, an IPv4 address or a bracketed IPv6 address, then a port.
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?):(\d{1,5})$")


def _bootstrap_servers(raw: str) -> str:
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        raise ValueError("must name at least one host:port")
    for entry in entries:
        match = _HOST_PORT.match(entry)
        if not match or not 0 < int(match.group(1)) < 65536:
            raise ValueError(f"{entry!r} is not host:port (for example localhost:9092)")
    return ",".join(entries)


_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def _tokens(raw: str) -> tuple[str, ...]:
    tokens = tuple(token.strip() for token in raw.split(",") if token.strip())
    for token in tokens:
        # Printable ASCII without spaces: anything else cannot travel in a URL
        # query, a Bearer header and a Basic password alike.
        if not _TOKEN.match(token):
            raise ValueError("tokens must be printable ASCII without spaces or commas")
    return tokens


def _names(raw: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _readable_file(raw: str) -> str:
    path = raw.strip()
    if not path:
        raise ValueError("must not be empty")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{path!r} is not a readable file")
    return path


def _analytics_dsn(raw: str) -> str:
    value = _string(raw)
    if not value.startswith(("duckdb:///", "postgresql://", "postgres://")):
        raise ValueError(f"{value.split('://')[0]!r} is not a supported store (use duckdb:///path or postgresql://...)")
    return value


def _http_url(raw: str) -> str:
    value = _string(raw)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _topic(raw: str) -> str:
    value = _string(raw)
    if not re.match(r"^[A-Za-z0-9._\-]{1,249}$", value) or value in {".", ".."}:
        raise ValueError(f"{raw!r} is not a valid Kafka topic name")
    return value


@dataclass(frozen=True)
class Setting:
    """One ``PASSPOST_*`` variable: how to parse it, its default and what it does."""

    field: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

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


SETTINGS: tuple[Setting, ...] = (
    Setting("kafka_bootstrap_servers", _bootstrap_servers, "localhost:9092",
            "Kafka brokers, comma-separated `host:port`."),
    Setting("kafka_client_id", _string, "passpost", "Client id sent to Kafka (shows in broker logs and quotas)."),
    Setting("kafka_compression", _choice("lz4", "zstd", "gzip", "snappy", "none"), "lz4",
            "Producer compression codec."),
    Setting("kafka_linger_ms", _non_negative_int, 0,
            "How long the producer waits to fill a batch. 0 suits the ingress: records of concurrent "
            "requests share a batch anyway while the previous one is in flight."),
    Setting("kafka_security_protocol", _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "PLAINTEXT",
            "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`, for producer, consumers and admin alike."),
    Setting("kafka_sasl_mechanism", _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SCRAM-SHA-512",
            "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (Strimzi's `KafkaUser` uses SCRAM-SHA-512)."),
    Setting("kafka_sasl_username", _string, None, "SASL user name (required with `SASL_*`)."),
    Setting("kafka_sasl_password", _string, None, "SASL password (required with `SASL_*`).", secret=True),
    Setting("kafka_ssl_ca_file", _readable_file, None,
            "CA bundle (PEM) that signed the brokers' certificates; the system's CAs when unset."),
    Setting("kafka_ssl_cert_file", _readable_file, None, "Client certificate (PEM) for mutual TLS."),
    Setting("kafka_ssl_key_file", _readable_file, None, "Private key (PEM) of the client certificate."),
    Setting("events_topic", _topic, "pass-postbacks.v1", "Topic of the Avro events."),
    Setting("dead_letter_topic", _topic, "pass-postbacks.dlq.v1",
            "Topic of rejected request bodies, byte for byte, with the reason in headers."),
    Setting("topic_partitions", _positive_int, 6, "Partitions for `passpost topics`."),
    Setting("topic_replication_factor", _positive_int, 1,
            "Replication factor for `passpost topics` (use 3 in production)."),
    Setting("schema_registry_url", _http_url, None,
            "Confluent-compatible schema registry (e.g. `http://apicurio:8080/apis/ccompat/v7`). Set, events are "
            "written in the Confluent wire format under the subject `<events topic>-value`; unset, Avro "
            "single-object encoding."),
    Setting("schema_registry_username", _string, None, "User name for the schema registry (HTTP Basic)."),
    Setting("schema_registry_password", _string, None, "Password for the schema registry (HTTP Basic).",
            secret=True),
    Setting("schema_registry_ca_file", _readable_file, None,
            "CA bundle (PEM) that signed the schema registry's certificate; the system's CAs when unset."),
    Setting("schema_registry_auto_register", _boolean, True,
            "The ingress registers the event schema at start when the registry lacks it; false where only "
            "`passpost schema register` may (the ingress then refuses to start until it is registered)."),
    Setting("host", _string, "127.0.0.1", "Address `passpost serve` listens on."),
    Setting("workers", _positive_int, 1,
            "Processes of `passpost serve` on its one port (each with its own Kafka producer; one `/metrics` adds "
            "them up). One per core; not with `PASSPOST_SPOOL_DIR`."),
    Setting("port", _port, 8000, "Port `passpost serve` listens on."),
    Setting("ingest_tokens", _tokens, (),
            "Accepted ingest tokens, comma-separated; several at once allow rotation.", secret=True),
    Setting("ingest_open", _boolean, False,
            "Run the ingress without any token (refused unless set to true)."),
    Setting("max_body_bytes", _positive_int, 1024 * 1024, "Largest request body accepted (413 above)."),
    Setting("known_origins", _names, (),
            "ORIGIN values counted by name in `passpost_events_produced_total{origin}`, comma-separated, besides the "
            "vendor's documented `GENERATE_PASS`; any other origin is counted as `other`."),
    Setting("max_items", _positive_int, 1000,
            "Most postbacks (items) one request may hold; 413 `too_many_items` above, body dead-lettered."),
    Setting("max_request_line_bytes", _int_at_least(256), 8 * 1024,
            "Longest request line (method, path and query) accepted; 414 above, before credentials."),
    Setting("max_header_bytes", _int_at_least(1024), 16 * 1024,
            "Most bytes of request headers accepted; 431 above, before credentials and without buffering more."),
    Setting("max_header_count", _positive_int, 100, "Most request headers accepted; 431 above."),
    Setting("header_timeout_seconds", _seconds, 10.0,
            "Time a client has to send the request line and headers; then 408 and the connection is closed."),
    Setting("body_timeout_seconds", _seconds, 30.0,
            "Time a client has to send the body once its headers are in; then 408 and the connection is closed."),
    Setting("max_connections", _positive_int, 256,
            "Most open client connections; one more is answered 503 and closed (each may hold a body in memory)."),
    Setting("produce_timeout_seconds", _seconds, 5.0,
            "How long a request waits for Kafka to confirm before answering 503 (the vendor gives up after 10 s)."),
    Setting("retry_after_seconds", _positive_int, 30, "The `Retry-After` value sent with a 503."),
    Setting("spool_dir", _string, None,
            "Directory of the durable local spool: a request Kafka does not confirm in time is kept there, "
            "answered 200 once on disk, and forwarded in order when Kafka is back (README, The spool). Unset: 503."),
    Setting("spool_max_bytes", _int_at_least(64 * 1024), 1024 * 1024 * 1024,
            "Most bytes the spool may hold; a request that does not fit is answered 503 with `Retry-After`."),
    Setting("spool_drain_seconds", _seconds, 10.0,
            "On SIGTERM, how long the forwarder keeps sending spooled records to Kafka before exiting; the rest "
            "stays in the spool for the next start."),
    Setting("shutdown_timeout_seconds", _seconds, 20.0,
            "On SIGTERM, how long in-flight requests get to finish before the producer flushes."),
    Setting("consumer_group", _string, None, "Consumer group of `passpost consume NAME`; `passpost-NAME` when unset."),
    Setting("consumer_port", _port, 9100, "Port of a consumer's `/healthz`, `/readyz` and `/metrics`."),
    Setting("consumer_batch_size", _positive_int, 5000, "Most events a consumer hands its sink in one batch."),
    Setting("consumer_batch_max_bytes", _positive_int, 8 * 1024 * 1024,
            "Most bytes fetched for one batch (bounds a consumer's memory whatever the backlog)."),
    Setting("consumer_retry_max_seconds", _seconds, 30.0,
            "Longest wait between retries of a batch the sink refused (the wait doubles from 0.1 s up to this)."),
    Setting("consumer_stall_seconds", _seconds, 60.0,
            "A consumer whose sink has refused batches for longer than this answers `/readyz` with 503 (stalled)."),
    Setting("analytics_dsn", _analytics_dsn, "duckdb:///data/analytics.duckdb",
            "Analytics store: `duckdb:///path` (relative to the working directory) or `postgresql://...`."),
    Setting("analytics_reference_value", _choice("hash", "keep", "drop"), "hash",
            "`reference_value` (an email or phone) in the analytics store: keyed `hash` (HMAC-SHA256), `keep` "
            "as sent, or `drop`."),
    Setting("analytics_hash_key", _string, None,
            "Key of the `hash` mode; when unset the store generates one once and keeps it in its `passpost_meta` "
            "table.", secret=True),
    Setting("alertmanager_url", _http_url, None,
            "Alertmanager to send alerts to (e.g. `http://alertmanager:9093`; they go to `/api/v2/alerts`)."),
    Setting("alert_webhook_url", _http_url, None,
            "URL that receives each alert notification as JSON shaped like Alertmanager's webhook."),
    Setting("alert_webhook_format", _choice("alertmanager", "slack"), "alertmanager",
            "`alertmanager` (its webhook payload, version 4) or `slack` (a `{\"text\": ...}` body)."),
    Setting("alert_log", _boolean, True, "Also log every alert notification (always on when no other sink is set)."),
    Setting("alert_rules_file", _readable_file, None,
            "TOML or YAML (`.yaml`/`.yml`) alert rules tried before the built-in ones (README, Alerts)."),
    Setting("alert_repeat_seconds", _seconds, 60.0,
            "Shortest time between two notifications of one firing alert; a repeat is sent only when its count grew."),
    Setting("alert_resolve_after_seconds", _seconds, 300.0,
            "An alert resolves, and the resolution is sent, when its failures stopped for this long."),
    Setting("alert_delivery_deadline_seconds", _seconds, 30.0,
            "How long a sink retries (backoff from 0.2 s doubling to 5 s) before the batch fails and is retried "
            "whole."),
    Setting("alert_first_start_lookback_seconds", _seconds, 3600.0,
            "On its first start (no state file, nothing committed) the alerts consumer reads events from this far "
            "back, not the topic's whole retention."),
    Setting("alert_state_file", _string, "data/alerts-state.json",
            "The alerts consumer's local store: open alerts and the offsets they cover (keep it on a volume)."),
    Setting("log_format", _choice("text", "json"), "text", "`text` for people, `json` for one JSON object per line."),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "Lowest level logged."),
)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str
    kafka_client_id: str
    kafka_compression: str
    kafka_linger_ms: int
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None = dataclasses.field(repr=False)
    kafka_ssl_ca_file: str | None
    kafka_ssl_cert_file: str | None
    kafka_ssl_key_file: str | None
    events_topic: str
    dead_letter_topic: str
    topic_partitions: int
    topic_replication_factor: int
    schema_registry_url: str | None
    schema_registry_username: str | None
    schema_registry_password: str | None = dataclasses.field(repr=False)
    schema_registry_ca_file: str | None
    schema_registry_auto_register: bool
    host: str
    workers: int
    port: int
    ingest_tokens: tuple[str, ...] = dataclasses.field(repr=False)
    ingest_open: bool
    max_body_bytes: int
    known_origins: tuple[str, ...]
    max_items: int
    max_request_line_bytes: int
    max_header_bytes: int
    max_header_count: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int
    produce_timeout_seconds: float
    retry_after_seconds: int
    spool_dir: str | None
    spool_max_bytes: int
    spool_drain_seconds: float
    shutdown_timeout_seconds: float
    consumer_group: str | None
    consumer_port: int
    consumer_batch_size: int
    consumer_batch_max_bytes: int
    consumer_retry_max_seconds: float
    consumer_stall_seconds: float
    analytics_dsn: str
    analytics_reference_value: str
    analytics_hash_key: str | None = dataclasses.field(repr=False)
    alertmanager_url: str | None
    alert_webhook_url: str | None
    alert_webhook_format: str
    alert_log: bool
    alert_rules_file: str | None
    alert_repeat_seconds: float
    alert_resolve_after_seconds: float
    alert_delivery_deadline_seconds: float
    alert_first_start_lookback_seconds: float
    alert_state_file: str
    log_format: str
    log_level: str

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def defaults() -> Settings:
    """Settings with every default, ignoring the environment."""
    return Settings(**{setting.field: setting.default for setting in SETTINGS})


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
    """The ingress refuses to run open by accident (SPEC section 2)."""
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
