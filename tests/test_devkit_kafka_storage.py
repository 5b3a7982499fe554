"""The local broker's formatted KRaft storage, copied under fresh ids (passpost_dev/kafka/storage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from passpost_dev.kafka import LocalKafkaError
from passpost_dev.kafka.storage import cluster_id_of, copy_formatted_storage, kafka_uuid, keep_as_template, template_dir


def formatted(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.properties").write_text("#\nnode.id=1\ndirectory.id=DIR\nversion=1\ncluster.id=CLUSTER\n")
    (folder / "bootstrap.checkpoint").write_bytes(b"features")
    return folder


def test_a_copy_has_new_cluster_and_directory_ids_and_everything_else_alike(tmp_path: Path) -> None:
    template = formatted(tmp_path / "template")
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    copy_formatted_storage(template, first)
    copy_formatted_storage(template, second)
    assert cluster_id_of(first) not in ("CLUSTER", cluster_id_of(second))
    meta = (first / "meta.properties").read_text().splitlines()
    assert "node.id=1" in meta and "version=1" in meta and "directory.id=DIR" not in meta
    assert (first / "bootstrap.checkpoint").read_bytes() == b"features"
    assert cluster_id_of(template) == "CLUSTER"  # the template itself is left as it was


def test_ids_are_kafka_uuids_no_option_could_be_mistaken_for() -> None:
    ids = {kafka_uuid() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(value) == 22 and not value.startswith("-") for value in ids)


def test_templates_are_kept_per_scram_users(tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    plain = template_dir(libs)
    alice, bob = template_dir(libs, ["--add-scram", "alice"]), template_dir(libs, ["--add-scram", "bob"])
    assert plain.parent == libs.parent and len({plain, alice, bob}) == 3
    assert template_dir(libs, ["--add-scram", "alice"]) == alice


def test_the_first_template_kept_stays(tmp_path: Path) -> None:
    template = tmp_path / "formatted-storage"
    keep_as_template(formatted(tmp_path / "one"), template, owner="1")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "meta.properties").write_text("cluster.id=OTHER\n")
    keep_as_template(tmp_path / "two", template, owner="2")
    assert cluster_id_of(template) == "CLUSTER"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["formatted-storage", "one", "two"]


def test_storage_without_a_cluster_id_is_named(tmp_path: Path) -> None:
    (tmp_path / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(LocalKafkaError, match="names no cluster.id"):
        cluster_id_of(tmp_path)
