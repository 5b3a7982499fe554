"""Tracing end to end against a real Jaeger (issue 19): the ingress, the spool and both built-in consumers
run as their own processes, configured by the OTEL_* variables alone, and the test reads the traces back
from Jaeger's query API."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from passpost import settings as settings_module
from passpost import tracing
from passpost.consumers import testing
from passpost.consumers.analytics import AnalyticsConsumer
from passpost.errors import ConfigurationError
from passpost.ingest.app import create_app
from passpost_dev.jaeger import LocalJaeger
from tests.alertmanager_fixtures import active_alerts
from tests.kafka_helpers import create_topics, read_all
from tests.live import free_port, live_ingress, stop, wait_until_ready
from tests.test_spool import wait_for

TOKEN = "trace-token"
REFERENCE = "someone.traced@example.com"  # personal data: must appear in no span


def postback(serial: str, status_code: str = "N802") -> bytes:
    return (f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>{status_code}</STATUSCODE>"
            f"<REFERENCEVALUE>{REFERENCE}</REFERENCEVALUE><SERIALNUMBER>{serial}</SERIALNUMBER>"
            f"<TIMESTAMP>2013-11-26T11:37:11-05:00</TIMESTAMP></POSTBACK>").encode()


def otel_env(jaeger: LocalJaeger) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def caller_context() -> tuple[str, str, str]:
    """A caller's trace id, span id and traceparent header."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def spans_by(trace: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(service, operation, tags, span) of each span of a Jaeger trace."""
    processes = trace["processes"]
    return [(processes[span["processID"]]["serviceName"], span["operationName"],
             {tag["key"]: tag["value"] for tag in span["tags"]}, span) for span in trace["spans"]]


@contextmanager
def live_consumer(name: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "passpost", "consume", name],
                                   env={**os.environ, **env, "PASSPOST_CONSUMER_PORT": str(port)},
                                   stdout=sink, stderr=sink)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", process, log, f"passpost consume {name}", 60)
        yield process
    finally:
        stop(process)


def test_one_postback_is_one_trace_from_the_request_to_every_sink(
        kafka_bootstrap: str, jaeger: LocalJaeger, alertmanager_url: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic, dlq = f"trace-events-{suffix}", f"trace-dlq-{suffix}"
    create_topics(kafka_bootstrap, [topic, dlq])
    common = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_EVENTS_TOPIC": topic,
              "PASSPOST_DEAD_LETTER_TOPIC": dlq, **otel_env(jaeger)}
    trace_id, caller_span, traceparent = caller_context()
    with ExitStack() as running:
        ingress = running.enter_context(live_ingress({**common, "PASSPOST_INGEST_TOKENS": TOKEN},
                                                     tmp_path / "ingress.log"))
        running.enter_context(live_consumer("analytics", {
            **common, "PASSPOST_CONSUMER_GROUP": f"trace-analytics-{suffix}",
            "PASSPOST_ANALYTICS_DSN": f"duckdb:///{tmp_path / 'analytics.duckdb'}"}, tmp_path / "analytics.log"))
        running.enter_context(live_consumer("alerts", {
            **common, "PASSPOST_CONSUMER_GROUP": f"trace-alerts-{suffix}", "PASSPOST_ALERTMANAGER_URL": alertmanager_url,
            "PASSPOST_ALERT_STATE_FILE": str(tmp_path / "alerts.json"),
            "PASSPOST_TRACE_URL_TEMPLATE": "https://traces.example/trace/{trace_id}"}, tmp_path / "alerts.log"))
        response = httpx.post(f"{ingress.url}/postbacks/passes", content=postback(f"S-{suffix}"),
                              headers={"Authorization": f"Bearer {TOKEN}", "traceparent": traceparent}, timeout=10)
        assert response.status_code == 200, response.text
        [event_id] = response.json()["event_ids"]

        def complete(trace: dict[str, Any]) -> bool:
            seen = {(service, operation) for service, operation, _, _ in spans_by(trace)}
            return {("passpost-ingress", "POST /postbacks/passes"), ("passpost-ingress", f"send {topic}"),
                    ("passpost-analytics", f"process {topic}"), ("passpost-analytics", "INSERT duckdb"),
                    ("passpost-alerts", f"process {topic}"), ("passpost-alerts", "POST")} <= seen

        trace = jaeger.wait_for_trace(trace_id, complete, timeout=60)
        # The alert names the trace of its first event, and links to it.
        wait_for(lambda: any(alert["annotations"].get("trace_id") == trace_id
                             for alert in active_alerts(alertmanager_url)), 30, "the alert naming the trace")
        [alert] = [alert for alert in active_alerts(alertmanager_url)
                   if alert["annotations"].get("trace_id") == trace_id]
        assert alert["annotations"]["trace_url"] == f"https://traces.example/trace/{trace_id}"

    spans = spans_by(trace)
    ids = {span["spanID"]: (service, operation) for service, operation, _, span in spans}

    def parent_of(span: dict[str, Any]) -> str | None:
        return next((ref["spanID"] for ref in span.get("references", []) if ref["refType"] == "CHILD_OF"), None)

    [(_, _, server_tags, server)] = [entry for entry in spans if entry[1] == "POST /postbacks/passes"]
    assert parent_of(server) == caller_span  # the caller's traceparent continued
    assert server_tags["span.kind"] == "server"
    assert server_tags["http.request.method"] == "POST" and server_tags["http.route"] == "/postbacks/passes"
    assert server_tags["http.response.status_code"] == 200
    [(_, _, producer_tags, producer)] = [entry for entry in spans if entry[1] == f"send {topic}"]
    assert parent_of(producer) == server["spanID"]
    assert producer_tags["span.kind"] == "producer" and producer_tags["messaging.system"] == "kafka"
    assert producer_tags["messaging.destination.name"] == topic and producer_tags["messaging.message.id"] == event_id
    # Where Kafka put it, once acknowledged (a fresh topic of one partition: its first record).
    assert (producer_tags["messaging.destination.partition.id"], producer_tags["messaging.kafka.offset"]) == ("0", 0)
    for service in ("passpost-analytics", "passpost-alerts"):
        [(_, _, batch_tags, batch)] = [entry for entry in spans if entry[:2] == (service, f"process {topic}")]
        assert batch_tags["span.kind"] == "consumer" and batch_tags["messaging.operation.type"] == "process"
        # In the trace, under the record's creation context and linked to it (Jaeger shows the two as one reference).
        assert [ref["spanID"] for ref in batch["references"]] == [producer["spanID"]]
        sinks = [ids[span["spanID"]][1] for _, _, _, span in spans if parent_of(span) == batch["spanID"]]
        assert sinks == (["INSERT duckdb"] if service == "passpost-analytics" else ["POST"])
    [(_, _, insert_tags, _)] = [entry for entry in spans if entry[1] == "INSERT duckdb"]
    assert insert_tags["db.system.name"] == "duckdb" and insert_tags["passpost.rows"] == 1
    [(_, _, delivery_tags, _)] = [entry for entry in spans if entry[:2] == ("passpost-alerts", "POST")]
    assert delivery_tags["span.kind"] == "client" and delivery_tags["http.response.status_code"] == 200
    assert REFERENCE not in json.dumps(trace)  # personal data stays out of every span
    # The access line carries the request's trace.
    access = [line for line in (tmp_path / "ingress.log").read_text().splitlines() if " request " in line]
    assert any(f"trace={trace_id} span={server['spanID']}" in line for line in access), access


def test_a_postback_spooled_while_the_broker_is_paused_is_traced_when_forwarded(
        local_kafka: Any, jaeger: LocalJaeger, tmp_path: Path) -> None:
    create_topics(local_kafka.bootstrap_servers, ["pass-postbacks.v1", "pass-postbacks.dlq.v1"])
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": local_kafka.bootstrap_servers, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_PRODUCE_TIMEOUT_SECONDS": "1", "PASSPOST_SPOOL_DIR": str(tmp_path / "spool"),
           **otel_env(jaeger)}
    trace_id, _, traceparent = caller_context()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with live_ingress(env, tmp_path / "ingress.log") as ingress:
        local_kafka.pause()
        try:
            # The first is spooled once its send is past the deadline; the second goes to the spool behind it,
            # Kafka not tried, so that only the forwarder ever sends it.
            first = httpx.post(f"{ingress.url}/postbacks/passes", content=postback("SPOOL-1", "N801"),
                               headers=headers, timeout=15)
            second = httpx.post(f"{ingress.url}/postbacks/passes", content=postback("SPOOL-2", "N801"),
                                headers={**headers, "traceparent": traceparent}, timeout=15)
            assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
        finally:
            local_kafka.resume()

        def forwarded(trace: dict[str, Any]) -> bool:
            return any(tags.get("passpost.spool.forwarded") for _, _, tags, _ in spans_by(trace))

        trace = jaeger.wait_for_trace(trace_id, forwarded, timeout=90)
    sends = [(tags, span) for _, operation, tags, span in spans_by(trace) if operation == "send pass-postbacks.v1"]
    [(spooling_tags, spooling)] = [(tags, span) for tags, span in sends if not tags.get("passpost.spool.forwarded")]
    [(forward_tags, forward)] = [(tags, span) for tags, span in sends if tags.get("passpost.spool.forwarded")]
    # The trace reads: answered 200 from the spool, sent to Kafka later, and where it went.
    assert spooling_tags["passpost.spooled"] is True and "messaging.kafka.offset" not in spooling_tags
    assert forward_tags["span.kind"] == "producer" and forward_tags["messaging.kafka.offset"] >= 0
    # In the request's trace, linked to the span the record was spooled under, which the record still names.
    assert forward["traceID"] == spooling["traceID"] == trace_id
    assert [ref["spanID"] for ref in forward["references"]] == [spooling["spanID"]]
    records = [record for record in read_all(local_kafka.bootstrap_servers, "pass-postbacks.v1", expected=2)
               if b"SPOOL-2" in record.value]
    assert records, "the forwarded record is on the topic"
    assert dict(records[0].headers)["traceparent"] == f"00-{trace_id}-{spooling['spanID']}-01".encode()


def test_with_tracing_off_no_span_is_made_and_no_exporter_thread_runs(kafka_bootstrap: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    tracing.shutdown()
    suffix = uuid.uuid4().hex[:10]
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers=kafka_bootstrap, events_topic=f"off-events-{suffix}",
        dead_letter_topic=f"off-dlq-{suffix}", ingest_tokens=(TOKEN,))
    create_topics(kafka_bootstrap, [settings.events_topic, settings.dead_letter_topic])
    with TestClient(create_app(settings)) as client:
        response = client.post("/postbacks/passes", content=postback("OFF-1", "N801"),
                               headers={"Authorization": f"Bearer {TOKEN}",
                                        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"})
        assert response.status_code == 200
        assert tracing.tracer is None
        assert not [thread.name for thread in threading.enumerate() if "Otel" in thread.name or "Span" in thread.name]
    [record] = read_all(kafka_bootstrap, settings.events_topic, expected=1)
    assert "traceparent" not in dict(record.headers)  # nothing made, nothing passed on


@pytest.mark.parametrize("store", ["duckdb", "postgresql"])
def test_the_runtime_gives_any_consumer_a_batch_span_with_its_sink_under_it(
        kafka_bootstrap: str, tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    dsn = f"duckdb:///{tmp_path / 'a.duckdb'}" if store == "duckdb" else request.getfixturevalue("postgres_dsn")
    settings = testing.settings_for(kafka_bootstrap, analytics_dsn=dsn)
    testing.produce(settings, [testing.event(), testing.event(), b"not avro"])
    result = testing.consume(AnalyticsConsumer(settings), settings, trace=True)
    [batch] = result.batch_spans()
    assert batch.attributes["messaging.batch.message_count"] == 3  # the undecodable one included
    assert sorted(span.name for span in result.children_of(batch)) == [
        f"INSERT {store}", "send pass-postbacks.dlq.analytics.v1"]
    [insert] = [span for span in result.children_of(batch) if span.name == f"INSERT {store}"]
    assert insert.attributes["passpost.rows"] == 2 and insert.attributes["db.system.name"] == store


def test_grpc_protocol_and_the_service_name_come_from_the_otel_variables(
        jaeger: LocalJaeger, monkeypatch: pytest.MonkeyPatch) -> None:
    service = f"trace-grpc-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_grpc)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)  # wins over the process's default name
    try:
        assert tracing.configure("passpost-ingress")
        assert tracing.tracer is not None
        with tracing.tracer.start_as_current_span("over grpc") as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
        tracing.flush()
        trace = jaeger.wait_for_trace(trace_id, lambda found: bool(found["spans"]))
        assert spans_by(trace)[0][:2] == (service, "over grpc")
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("environ", [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                          "OTEL_SDK_DISABLED": "true"},
                                     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                      "OTEL_TRACES_EXPORTER": "none"}])
def test_tracing_is_off_without_an_endpoint_or_when_disabled(environ: dict[str, str]) -> None:
    assert not tracing.wanted(environ)


def test_an_unknown_protocol_is_one_line_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.configure("passpost-ingress")
    assert tracing.tracer is None


def test_log_lines_inside_a_span_name_it() -> None:
    import logging

    from passpost.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("passpost.ingest", logging.INFO, __file__, 1, "request", None, None)
    assert "trace_id" not in json.loads(JsonFormatter().format(record))  # outside a span: nothing added
    with tracing.record_spans():
        assert tracing.tracer is not None
        with tracing.tracer.start_as_current_span("request") as span:
            context = span.get_span_context()
            line = json.loads(JsonFormatter().format(record))
            text = TextFormatter().format(record)
    assert line["trace_id"] == f"{context.trace_id:032x}" and line["span_id"] == f"{context.span_id:016x}"
    assert text.endswith(f"trace={context.trace_id:032x} span={context.span_id:016x}")


def test_the_request_latency_names_its_trace_to_an_openmetrics_scrape(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers=kafka_bootstrap, events_topic=f"exemplar-events-{suffix}",
        dead_letter_topic=f"exemplar-dlq-{suffix}", ingest_tokens=(TOKEN,))
    create_topics(kafka_bootstrap, [settings.events_topic, settings.dead_letter_topic])
    trace_id, _, traceparent = caller_context()
    with tracing.record_spans() as spans, TestClient(create_app(settings)) as client:
        response = client.post("/postbacks/passes", content=postback("EXEMPLAR-1", "N801"),
                               headers={"Authorization": f"Bearer {TOKEN}", "traceparent": traceparent})
        assert response.status_code == 200
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        classic = client.get("/metrics")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert any(line.startswith("passpost_http_request_duration_seconds_bucket") and f'trace_id="{trace_id}"' in line
               for line in openmetrics.text.splitlines())
    assert classic.headers["content-type"].startswith("text/plain") and "trace_id" not in classic.text
    assert {span.name for span in spans} >= {"POST /postbacks/passes", f"send {settings.events_topic}"}


def test_a_refused_postback_names_its_refusal_and_its_dead_letter_carries_the_trace(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = settings_module.defaults().replace(
        kafka_bootstrap_servers=kafka_bootstrap, events_topic=f"refused-events-{suffix}",
        dead_letter_topic=f"refused-dlq-{suffix}", ingest_tokens=(TOKEN,))
    create_topics(kafka_bootstrap, [settings.events_topic, settings.dead_letter_topic])
    trace_id, _, traceparent = caller_context()
    with tracing.record_spans() as spans, TestClient(create_app(settings)) as client:
        response = client.post("/postbacks/passes", content=b"<not xml",
                               headers={"Authorization": f"Bearer {TOKEN}", "traceparent": traceparent})
    assert response.status_code == 400
    [server] = [span for span in spans if span.name == "POST /postbacks/passes"]
    assert server.attributes["error.type"] == response.json()["error"]
    assert server.attributes["http.response.status_code"] == 400
    [send] = [span for span in spans if span.name == f"send {settings.dead_letter_topic}"]
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    [letter] = read_all(kafka_bootstrap, settings.dead_letter_topic, expected=1)
    assert dict(letter.headers)["traceparent"] == f"00-{trace_id}-{send.context.span_id:016x}-01".encode()
