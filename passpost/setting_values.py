"""How each setting's text becomes its value: the parsers ``passpost.settings`` declares its
settings with. Each raises ``SettingsError`` with one line saying what is wrong with the value."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable

from passpost.errors import ConfigurationError


class SettingsError(ConfigurationError, ValueError):
    """A setting has a value passpost cannot use. ``str()`` is one line naming it."""


def string(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def trace_url_template(raw: str) -> str:
    value = string(raw)
    if "{trace_id}" not in value:
        raise ValueError("must contain {trace_id}, where the trace id goes")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
        if value < minimum:
            raise ValueError(f"{raw!r} must be at least {minimum}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def port(raw: str) -> int:
    value = positive_int(raw)
    if value > 65535:
        raise ValueError(f"{raw!r} is not a TCP port (1-65535)")
    return value


def seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{raw!r} must be a positive number of seconds")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def choice(*choices: str) -> Callable[[str], str]:
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


def bootstrap_servers(raw: str) -> str:
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        raise ValueError("must name at least one host:port")
    for entry in entries:
        match = _HOST_PORT.match(entry)
        if not match or not 0 < int(match.group(1)) < 65536:
            raise ValueError(f"{entry!r} is not host:port (for example localhost:9092)")
    return ",".join(entries)


_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def tokens(raw: str) -> tuple[str, ...]:
    tokens = tuple(token.strip() for token in raw.split(",") if token.strip())
    for token in tokens:
        # Printable ASCII without spaces: anything else cannot travel in a URL
        # query, a Bearer header and a Basic password alike.
        if not _TOKEN.match(token):
            raise ValueError("tokens must be printable ASCII without spaces or commas")
    return tokens


def names(raw: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def readable_file(raw: str) -> str:
    path = raw.strip()
    if not path:
        raise ValueError("must not be empty")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{path!r} is not a readable file")
    return path


def analytics_dsn(raw: str) -> str:
    value = string(raw)
    if not value.startswith(("duckdb:///", "postgresql://", "postgres://")):
        raise ValueError(f"{value.split('://')[0]!r} is not a supported store (use duckdb:///path or postgresql://...)")
    return value


def iceberg_catalog_uri(raw: str) -> str:
    value = string(raw)
    scheme = value.partition("://")[0].lower()
    if scheme not in {"sqlite", "postgresql", "postgres", "postgresql+psycopg", "http", "https"}:
        # Not the value: a catalog URI may hold a password.
        raise ValueError(f"{scheme!r} is not a supported catalog (use sqlite:///path, postgresql://... or an "
                         "Iceberg REST catalog https://...)")
    if scheme == "sqlite" and not value.startswith("sqlite:///"):
        raise ValueError("a SQLite catalog is sqlite:///path (three slashes, then the file)")
    return value


def iceberg_warehouse(raw: str) -> str:
    value = string(raw)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
        return value
    if parts.scheme in {"s3", "s3a"} and parts.netloc:
        return value
    raise ValueError(f"{value!r} is not a warehouse location (use file:///absolute/path or s3://bucket/prefix)")


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def iceberg_table(raw: str) -> str:
    value = string(raw)
    parts = value.split(".")
    if len(parts) < 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError(f"{value!r} is not namespace.table (letters, digits and underscores, for example "
                         "passpost.pass_postbacks)")
    return value


def http_url(raw: str) -> str:
    value = string(raw)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def topic(raw: str) -> str:
    value = string(raw)
    if not re.match(r"^[A-Za-z0-9._\-]{1,249}$", value) or value in {".", ".."}:
        raise ValueError(f"{raw!r} is not a valid Kafka topic name")
    return value
