"""The broker's KRaft storage: formatted once per Kafka version (and SCRAM users), then copied.

A formatted KRaft directory is ``meta.properties`` (ids) plus ``bootstrap.checkpoint``
(feature levels that depend only on the Kafka version, and the SCRAM users given to the
format), so copying a template and renewing its ids is equivalent to formatting, without a
second JVM start per broker.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from passpost_dev.kafka.errors import LocalKafkaError

_TEMPLATE = "formatted-storage"


def kafka_uuid() -> str:
    """A new id in Kafka's ``Uuid`` string form (cluster and directory ids)."""
    while True:
        # A leading "-" would be read as an option by the storage tool.
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def template_dir(libs: Path, scram_arguments: Sequence[str] = ()) -> Path:
    """Where the formatted storage for brokers with these SCRAM users is kept, beside the jars."""
    if not scram_arguments:
        return libs.parent / _TEMPLATE
    # A template formatted with SCRAM users holds them (salted) in its bootstrap
    # checkpoint; it serves later brokers with the same users only.
    key = hashlib.sha256("\0".join(scram_arguments).encode()).hexdigest()[:16]
    return libs.parent / f"{_TEMPLATE}-scram-{key}"


def copy_formatted_storage(template: Path, data: Path, *, node_id: int = 1, cluster_id: str | None = None) -> None:
    """Give ``data`` the formatted storage of ``template`` under fresh identities.

    The nodes of one cluster share ``cluster_id``; a lone broker gets a new one. The
    template may come from any node id, so ``node_id`` is always written.
    """
    shutil.copytree(template, data, dirs_exist_ok=True)
    fresh = {"cluster.id": cluster_id or kafka_uuid(), "directory.id": kafka_uuid(), "node.id": str(node_id)}
    meta = data / "meta.properties"
    lines = meta.read_text(encoding="utf-8").splitlines()
    renewed = [
        f"{key}={fresh[key]}" if (key := line.partition("=")[0].strip()) in fresh else line
        for line in lines
    ]
    meta.write_text("\n".join(renewed) + "\n", encoding="utf-8")


def keep_as_template(data: Path, template: Path, owner: str) -> None:
    """Keep a freshly formatted ``data`` as ``template`` unless another broker stored one first."""
    partial = template.with_name(f"{template.name}.{owner}.partial")
    shutil.copytree(data, partial)
    try:
        partial.rename(template)
    except OSError:  # another broker stored its template first; theirs is as good
        shutil.rmtree(partial, ignore_errors=True)


def cluster_id_of(data: Path) -> str:
    for line in (data / "meta.properties").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    raise LocalKafkaError(f"{data / 'meta.properties'} names no cluster.id")
