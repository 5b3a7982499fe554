"""Settings from PASSPOST_* variables (passpost/settings.py) and how the CLI reports them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from passpost import settings
from passpost.settings import SettingsError

README = Path(__file__).parent.parent / "README.md"


def test_defaults_match_the_spec() -> None:
    loaded = settings.load({})
    assert loaded.kafka_bootstrap_servers == "localhost:9092"
    assert loaded.events_topic == "pass-postbacks.v1"
    assert loaded.dead_letter_topic == "pass-postbacks.dlq.v1"
    assert (loaded.host, loaded.port) == ("127.0.0.1", 8000)
    assert loaded.max_body_bytes == 1024 * 1024
    assert loaded.produce_timeout_seconds < 10  # the sender gives up after 10 s
    assert loaded == settings.defaults()


def test_values_are_parsed() -> None:
    loaded = settings.load({
        "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": " kafka-0:9092, kafka-1.example:9093 ,[::1]:9094",
        "PASSPOST_INGEST_TOKENS": "old-token, new-token",
        "PASSPOST_PORT": "8080",
        "PASSPOST_INGEST_OPEN": "TRUE",
        "PASSPOST_PRODUCE_TIMEOUT_SECONDS": "2.5",
        "PASSPOST_LOG_FORMAT": "JSON",
    })
    assert loaded.kafka_bootstrap_servers == "kafka-0:9092,kafka-1.example:9093,[::1]:9094"
    assert loaded.ingest_tokens == ("old-token", "new-token")
    assert loaded.port == 8080 and loaded.ingest_open is True
    assert loaded.produce_timeout_seconds == 2.5 and loaded.log_format == "json"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PASSPOST_KAFKA_BOOTSTRAP_SERVERS", "localhost9092", "'localhost9092' is not host:port"),
        ("PASSPOST_KAFKA_BOOTSTRAP_SERVERS", "kafka:99999", "is not host:port"),
        ("PASSPOST_KAFKA_BOOTSTRAP_SERVERS", "http://kafka:9092", "is not host:port"),
        ("PASSPOST_PORT", "eighty", "is not a whole number"),
        ("PASSPOST_PORT", "70000", "is not a TCP port"),
        ("PASSPOST_INGEST_OPEN", "maybe", "is not a boolean"),
        ("PASSPOST_PRODUCE_TIMEOUT_SECONDS", "-1", "positive number of seconds"),
        ("PASSPOST_PRODUCE_TIMEOUT_SECONDS", "nan", "positive number of seconds"),
        ("PASSPOST_LOG_FORMAT", "xml", "is not one of text, json"),
        ("PASSPOST_EVENTS_TOPIC", "bad topic!", "not a valid Kafka topic name"),
        ("PASSPOST_INGEST_TOKENS", "has space", "printable ASCII"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings.load({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and fragment in message and "\n" not in message


def test_no_token_is_refused_unless_open() -> None:
    with pytest.raises(SettingsError, match="PASSPOST_INGEST_TOKENS"):
        settings.require_credentials(settings.load({}))
    settings.require_credentials(settings.load({"PASSPOST_INGEST_OPEN": "true"}))
    settings.require_credentials(settings.load({"PASSPOST_INGEST_TOKENS": "t0ken"}))


def test_tokens_are_not_in_the_repr() -> None:
    assert "s3cret" not in repr(settings.load({"PASSPOST_INGEST_TOKENS": "s3cret"}))


# The Iceberg catalog URI may hold the catalog database's password (postgresql://user:password@...).
SECRETS = {"kafka_sasl_password", "schema_registry_password", "ingest_tokens", "analytics_hash_key",
           "iceberg_catalog_uri"}


def test_the_secrets_are_declared_as_such() -> None:
    assert {setting.field for setting in settings.SETTINGS if setting.secret} == SECRETS


def test_no_secret_value_appears_in_a_repr_or_str() -> None:
    secret = {setting.env: f"s3cret-{setting.field}" for setting in settings.SETTINGS if setting.secret}
    # A URI's form is checked: the password is where a catalog URI holds it.
    secret["PASSPOST_ICEBERG_CATALOG_URI"] = "postgresql://iceberg:s3cret@db/catalog"
    loaded = settings.load({**secret, "PASSPOST_SCHEMA_REGISTRY_USERNAME": "registry-user",
                            "PASSPOST_KAFKA_SASL_USERNAME": "kafka-user"})
    assert loaded.kafka_sasl_password == "s3cret-kafka_sasl_password"  # read, only not shown
    for text in (repr(loaded), str(loaded), f"{loaded}", repr(settings.KafkaSettings(kafka_sasl_password="pw!"))):
        assert "s3cret" not in text and "pw!" not in text
    shown = repr(loaded)
    assert shown.startswith("Settings(kafka_bootstrap_servers='localhost:9092', ")
    for field in SECRETS:
        assert f"{field}={settings.HIDDEN}" in shown  # set, and said to be
    # Everything else is shown as it is, so a repr still tells what runs.
    assert "kafka_sasl_username='kafka-user'" in shown and "schema_registry_username='registry-user'" in shown
    assert "port=8000" in shown and "log_level='info'" in shown
    # An unset secret is shown as unset.
    unset = repr(settings.defaults())
    assert "kafka_sasl_password=None" in unset and "ingest_tokens=()" in unset and settings.HIDDEN not in unset


def test_settings_are_grouped_by_component() -> None:
    loaded = settings.load({"PASSPOST_ALERT_STATE_FILE": "/var/lib/alerts.json"})
    declared = {component: [field.name for field in dataclasses.fields(component)]
                for component in settings.COMPONENTS}
    # Each setting is declared by exactly one component, and the components in order are the table's order.
    assert [name for names in declared.values() for name in names] == [setting.field for setting in settings.SETTINGS]
    assert {setting.field: setting.component for setting in settings.SETTINGS} == {
        name: settings._component_name(component) for component, names in declared.items() for name in names}
    by_name = {setting.field: setting.component for setting in settings.SETTINGS}
    assert (by_name["kafka_sasl_password"], by_name["schema_registry_url"], by_name["alert_state_file"]) == (
        "kafka", "schema registry", "alert")
    # Settings is each component at once: code that needs one component can ask for just that.
    for component in settings.COMPONENTS:
        assert isinstance(loaded, component)
    alerts: settings.AlertSettings = loaded
    assert alerts.alert_state_file == "/var/lib/alerts.json"
    # A component alone has the same defaults as Settings.
    assert settings.AlertSettings().alert_repeat_seconds == settings.defaults().alert_repeat_seconds == 60.0
    assert repr(settings.LogSettings()) == "LogSettings(log_format='text', log_level='info')"


def test_unknown_variables_are_reported() -> None:
    environ = {"PASSPOST_KAFKA_BOOTSTRAP_SERVER": "x:1", "PASSPOST_PORT": "1", "OTHER": "x"}
    assert settings.unknown_variables(environ) == ["PASSPOST_KAFKA_BOOTSTRAP_SERVER"]


def test_readme_table_lists_every_setting() -> None:
    assert settings.markdown_table() in README.read_text(), "regenerate the README table: python -m passpost.settings"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passpost", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["serve"], {}, "PASSPOST_INGEST_TOKENS"),
        (["serve"], {"PASSPOST_INGEST_TOKENS": "t", "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": "localhost9092"},
         "PASSPOST_KAFKA_BOOTSTRAP_SERVERS"),
        (["serve", "--port", "0"], {"PASSPOST_INGEST_TOKENS": "t"}, "--port"),
        (["serve", "--bogus"], {}, "--bogus"),
        (["no-such-command"], {}, "no-such-command"),
        (["topics"], {"PASSPOST_TOPIC_PARTITIONS": "zero"}, "PASSPOST_TOPIC_PARTITIONS"),
    ],
)
def test_cli_reports_bad_settings_and_arguments_in_one_line_with_status_2(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_cli_reports_unreachable_kafka_in_one_line() -> None:
    result = run_cli("serve", env={"PASSPOST_INGEST_TOKENS": "t", "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["topics"], ["dev"], ["dlq", "replay"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_kafka_security_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    loaded = settings.load({
        "PASSPOST_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "PASSPOST_KAFKA_SASL_MECHANISM": "scram-sha-256",
        "PASSPOST_KAFKA_SASL_USERNAME": "ingest",
        "PASSPOST_KAFKA_SASL_PASSWORD": "pw",
        "PASSPOST_KAFKA_SSL_CA_FILE": str(ca),
    })
    assert (loaded.kafka_security_protocol, loaded.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert "pw" not in repr(loaded)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PASSPOST_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "PASSPOST_KAFKA_SASL_USERNAME"),
        ({"PASSPOST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PASSPOST_KAFKA_SASL_USERNAME": "u"},
         "PASSPOST_KAFKA_SASL_PASSWORD"),
        ({"PASSPOST_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PASSPOST_KAFKA_SECURITY_PROTOCOL"),
        ({"PASSPOST_KAFKA_SASL_MECHANISM": "GSSAPI"}, "PASSPOST_KAFKA_SASL_MECHANISM"),
        ({"PASSPOST_KAFKA_SSL_CA_FILE": "/no/such/ca.pem"}, "PASSPOST_KAFKA_SSL_CA_FILE"),
        ({"PASSPOST_KAFKA_SSL_CERT_FILE": "/etc/hostname"}, "PASSPOST_KAFKA_SSL_KEY_FILE"),
    ],
)
def test_inconsistent_kafka_security_settings_name_what_to_fix(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings.load(environ)
    assert str(caught.value).startswith(named + ": ")
