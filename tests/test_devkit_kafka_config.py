"""The local broker's configuration files (passpost_dev/kafka/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from passpost_dev.kafka import Certificates
from passpost_dev.kafka.config import BrokerConfig


def config(tmp_path: Path, listener_ports: dict[str, int], certificates: Certificates | None = None) -> BrokerConfig:
    return BrokerConfig(workdir=tmp_path, port=9092, controller_port=9093, listener_ports=listener_ports,
                        sasl_username="user", sasl_password="pw", ssl_client_auth="required", log_level="INFO",
                        certificates=certificates)


def properties_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_plaintext_only_broker_advertises_one_listener_and_keeps_the_controller_to_itself(tmp_path: Path) -> None:
    written = properties_file(config(tmp_path, {}).write())
    assert written["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert written["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert written["log.dirs"] == str(tmp_path / "data")
    assert written["auto.create.topics.enable"] == "false"
    assert not any(key.startswith(("listener.name.", "ssl.")) for key in written)
    assert config(tmp_path, {}).scram_arguments() == []
    assert "rootLogger.level = INFO" in (tmp_path / "log4j2.properties").read_text()


def test_secured_listeners_get_their_ports_mechanisms_and_inline_pem(tmp_path: Path) -> None:
    pem = "-----BEGIN X-----\nAAAA\n-----END X-----\n"
    files = Certificates.in_folder(tmp_path / "tls")
    files.ca_file.parent.mkdir()
    for path in files:
        path.write_text(pem)
    secured = config(tmp_path, {"SASL_PLAINTEXT": 1, "SSL": 2, "SASL_SSL": 3}, files)
    written = properties_file(secured.write())
    assert written["advertised.listeners"] == ("PLAINTEXT://127.0.0.1:9092,SASL_PLAINTEXT://127.0.0.1:1,"
                                               "SSL://127.0.0.1:2,SASL_SSL://127.0.0.1:3")
    assert written["listener.name.ssl.ssl.client.auth"] == "required"
    assert written["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
    assert 'user_user="pw"' in written["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert written["ssl.truststore.certificates"] == "-----BEGIN X-----\\nAAAA\\n-----END X-----"
    assert secured.scram_arguments() == ["--add-scram", "SCRAM-SHA-512=[name=user,password=pw]",
                                         "--add-scram", "SCRAM-SHA-256=[name=user,password=pw]"]


def test_a_tls_listener_without_certificates_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="certificates"):
        config(tmp_path, {"SSL": 2}).server_properties()


def test_extra_properties_are_written_over_the_defaults(tmp_path: Path) -> None:
    from dataclasses import replace

    extra = {"authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
             "log.segment.bytes": 1048576}
    written = properties_file(replace(config(tmp_path, {}), extra_properties=extra).write())
    assert written["authorizer.class.name"] == extra["authorizer.class.name"]
    assert written["log.segment.bytes"] == "1048576"
