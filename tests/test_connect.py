"""A JVM consumer written elsewhere reads our events: Kafka Connect standalone (Apache Kafka's own
runtime, the broker's version) with Apicurio's AvroConverter and the FileStreamSink connector
writes the vendor example's event to a file, and the test reads its fields there.

Connect finds the writer schema by the id in the Confluent framing through Apicurio's own
v3 API (not the Confluent-compatible one the ingress used): the same id, two APIs.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.ecosystem import CCOMPAT, Missing, connect_libs, java21, unavailable
from tests.kafka_helpers import unique_topic
from tests.live import free_port, stop
from tests.test_schema_registry import post_vendor_example, registry_env

pytestmark = pytest.mark.kafka

# FileStreamSink writes each record's value with toString(): Connect's Struct{name=value,...}.
_FIELD = re.compile(r"(\w+)=([^,}]*)")


def _properties(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
    return path


def test_kafka_connect_with_apicurio_converter_sinks_the_vendor_example_to_a_file(
        kafka_bootstrap: str, kafka_topics: object, schema_registry: str, tmp_path: Path) -> None:
    try:
        java, libs = java21(), connect_libs()
    except Missing as missing:
        unavailable(str(missing))
    topic = unique_topic("connect")
    kafka_topics([topic])  # type: ignore[operator]
    event_id = post_vendor_example(registry_env(kafka_bootstrap, schema_registry, topic), tmp_path / "ingress.log")

    sink_file = tmp_path / "events.txt"
    worker = _properties(tmp_path / "worker.properties", {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": f"connect-{topic}",  # ignored by standalone; the sink's group is connect-<name>
        "listeners": f"http://127.0.0.1:{free_port()}",
        "offset.storage.file.filename": str(tmp_path / "connect.offsets"),
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "io.apicurio.registry.utils.converter.AvroConverter",
        "value.converter.apicurio.registry.url": schema_registry.removesuffix(CCOMPAT) + "/apis/registry/v3",
        # Confluent framing: a 4-byte id after the magic byte; Apicurio 3's ccompat ids are content ids.
        "value.converter.apicurio.registry.use-id": "contentId",
        "plugin.discovery": "only_scan",
    })
    connector = _properties(tmp_path / "file-sink.properties", {
        "name": f"passpost-file-sink-{topic}",
        "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "file": str(sink_file),
    })
    log4j = _properties(tmp_path / "log4j2.properties", {
        "rootLogger.level": "INFO", "rootLogger.appenderRef.file.ref": "file",
        "appender.file.type": "File", "appender.file.name": "file", "appender.file.fileName": str(tmp_path / "connect.log"),
        "appender.file.layout.type": "PatternLayout", "appender.file.layout.pattern": "%d %p %c{1} %m%n",
    })
    log = tmp_path / "connect.out"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [java, "-Xmx384m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", f"-Dlog4j2.configurationFile={log4j}",
             "-cp", f"{libs}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (sink_file.exists() and sink_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                connect_log = tmp_path / "connect.log"
                raise AssertionError("Connect wrote nothing:\n" + log.read_text(errors="replace")[-3000:]
                                     + (connect_log.read_text(errors="replace")[-5000:] if connect_log.exists() else ""))
            time.sleep(0.5)
        print(f"Connect wrote the event {time.monotonic() - started:.1f} s after its start")
    finally:
        stop(process)

    [line] = sink_file.read_text().strip().splitlines()
    assert line.startswith("Struct{"), line
    fields = dict(_FIELD.findall(line))
    assert fields["event_id"] == event_id
    assert (fields["origin"], fields["status_code"], fields["outcome"]) == ("GENERATE_PASS", "N801", "SUCCESS")
    assert (fields["referenced_by"], fields["reference_value"]) == ("Email", "vikmut@mail.com")
    assert (fields["custom_pass_id"], fields["pass_data_id"]) == ("ID-123323", "40556")
    assert fields["serial_number"] == "5294CE37878AE-112613-113711"
    assert fields["timestamp_raw"] == "2013-11-26T11:37:11-05:00"
    # timestamp-micros is not a Connect logical type: it arrives as the long it is on the wire.
    assert fields["generated_at"] == str(1385483831 * 1_000_000)
