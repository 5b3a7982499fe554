"""schemas/asyncapi.yaml: valid for the AsyncAPI parser (npm @asyncapi/parser, with its Avro schema
parser resolving the .avsc it references), and in step with the settings' defaults, the schema and
what the ingress writes (the dead-letter headers and error codes, the events' headers)."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from passpost import settings as settings_module
from passpost.ingest.app import Ingress
from passpost.schemas import evolution
from passpost_dev.cache import cache_root, exclusive_lock
from tests.ecosystem import unavailable

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "schemas" / "asyncapi.yaml"
VALIDATE = ROOT / "tests" / "asyncapi" / "validate.cjs"
PARSER_VERSION = "3.6.6"
AVRO_PARSER_VERSION = "3.1.0"


@pytest.fixture(scope="module")
def parser_modules() -> Path:
    """The parser's node_modules, installed once into the cache (never into the repository)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to run the AsyncAPI parser")
    home = cache_root() / f"asyncapi-parser-{PARSER_VERSION}-avro-{AVRO_PARSER_VERSION}"
    done = home / ".complete"
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / ".lock"):
        if not done.exists():
            result = subprocess.run(
                [str(npm), "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(home),
                 f"@asyncapi/parser@{PARSER_VERSION}", f"@asyncapi/avro-schema-parser@{AVRO_PARSER_VERSION}"],
                capture_output=True, text=True, check=False, timeout=600)
            if result.returncode != 0:
                unavailable(f"npm could not install @asyncapi/parser: {result.stderr.strip()[-500:]}")
            done.touch()
    return home / "node_modules"


def parse(modules: Path, document: Path) -> tuple[int, dict[str, object]]:
    result = subprocess.run(["node", str(VALIDATE), str(modules), str(document)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_the_asyncapi_parser_accepts_the_document_and_reads_the_avro_schema(parser_modules: Path) -> None:
    status, parsed = parse(parser_modules, DOCUMENT)
    assert (status, parsed["errors"], parsed["warnings"]) == (0, [], [])
    channels = parsed["channels"]
    assert isinstance(channels, dict)
    event = channels["events"]["messages"]["passPostback"]
    assert event["schemaFormat"].startswith("application/vnd.apache.avro")
    # The payload is the .avsc itself, by reference: the parser sees exactly its fields.
    assert event["fields"] == [field["name"] for field in evolution.current()["fields"]]
    assert channels["deadLetters"]["messages"]["refusedRequest"]["headers"] == dead_letter_headers()


def test_the_parser_refuses_a_document_whose_avro_schema_is_broken(parser_modules: Path, tmp_path: Path) -> None:
    shutil.copy(DOCUMENT, tmp_path / "asyncapi.yaml")
    avsc = (ROOT / "schemas" / "pass_postback.avsc").read_text()
    (tmp_path / "pass_postback.avsc").write_text(avsc.replace('"type": "enum"', '"type": "enumeration"'))
    status, parsed = parse(parser_modules, tmp_path / "asyncapi.yaml")
    assert status == 1 and parsed["errors"]


def dead_letter_headers() -> list[str]:
    """The header names the ingress gives a dead letter, read from its code."""
    return re.findall(r'\(\s*"([a-z_]+)",', inspect.getsource(Ingress._dead_letter))


def test_the_document_is_in_step_with_the_settings_the_schema_and_the_ingress() -> None:
    document = yaml.safe_load(DOCUMENT.read_text())
    defaults = settings_module.defaults()
    channels = document["channels"]
    assert channels["events"]["address"] == channels["events"]["bindings"]["kafka"]["topic"] == defaults.events_topic
    assert (channels["deadLetters"]["address"] == channels["deadLetters"]["bindings"]["kafka"]["topic"]
            == defaults.dead_letter_topic)
    for channel in channels.values():
        assert channel["bindings"]["kafka"]["partitions"] == defaults.topic_partitions
        assert channel["bindings"]["kafka"]["replicas"] == defaults.topic_replication_factor
    assert document["servers"]["kafka"]["host"] == defaults.kafka_bootstrap_servers

    messages = document["components"]["messages"]
    event = messages["passPostback"]
    assert (DOCUMENT.parent / event["payload"]["schema"]["$ref"]).resolve() == ROOT / "schemas" / "pass_postback.avsc"
    assert event["bindings"]["kafka"]["schemaLookupStrategy"] == "TopicNameStrategy"
    # What the ingress puts on each event: the request id header.
    records_source = inspect.getsource(Ingress.receive_postback)
    assert list(event["headers"]["properties"]) == re.findall(r'\("([a-z_]+)", request_id', records_source)

    refused = messages["refusedRequest"]["headers"]
    assert list(refused["properties"]) == refused["required"] == dead_letter_headers()
    codes = set()
    for source in (ROOT / "ingest").glob("*.py"):
        codes |= set(re.findall(r'Rejected\(\s*\d{3},\s*"([a-z_]+)"', source.read_text()))
    assert codes and sorted(refused["properties"]["error"]["enum"]) == sorted(codes)
