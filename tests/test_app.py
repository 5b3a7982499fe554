"""The ingress end to end (ingest/app.py): HTTP in, records on the real Kafka out.

Events are read back from the broker and decoded independently of the project's codec:
plain fastavro with the schema file, after checking the single-object header by hand.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest
from starlette.testclient import TestClient

from passpost import settings as settings_module
from passpost.ingest.app import POSTBACK_PATH, create_app
from passpost.settings import Settings
from tests.kafka_helpers import create_topics, read_all

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parent.parent
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_bytes()
SCHEMA = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pass_postback.avsc").read_text()))
TOKEN = "test-token-1"


def independent_decode(value: bytes) -> dict:
    assert value[:2] == b"\xc3\x01", "Avro single-object marker"
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), SCHEMA)


def make_settings(bootstrap: str, **overrides: object) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    base = settings_module.defaults().replace(
        kafka_bootstrap_servers=bootstrap,
        events_topic=f"events-{suffix}",
        dead_letter_topic=f"dlq-{suffix}",
        ingest_tokens=(TOKEN, "next-token"),
        produce_timeout_seconds=5.0,
    )
    return base.replace(**overrides)


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    s = make_settings(kafka_bootstrap)
    create_topics(kafka_bootstrap, [s.events_topic, s.dead_letter_topic])
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: TestClient, body: bytes, *, token: str | None = TOKEN, **kwargs: object):
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    return client.post(POSTBACK_PATH, content=body, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_vendor_example_lands_on_the_topic_and_decodes(client: TestClient, settings: Settings) -> None:
    response = post(client, VENDOR_EXAMPLE, headers={"Content-Type": "application/xml", "X-Request-ID": "req-123"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    [event_id] = response.json()["event_ids"]

    [record] = read_all(settings.kafka_bootstrap_servers, settings.events_topic, expected=1)
    assert record.key == b"5294CE37878AE-112613-113711"
    assert dict(record.headers)["request_id"] == b"req-123"
    event = independent_decode(record.value)
    assert event["event_id"] == event_id
    assert event["origin"] == "GENERATE_PASS"
    assert event["status_code"] == "N801"
    assert event["outcome"] == "SUCCESS"
    assert event["reference_value"] == "vikmut@mail.com"
    assert event["custom_pass_id"] == "ID-123323"
    assert event["pass_data_id"] == "40556"
    assert event["timestamp_raw"] == "2013-11-26T11:37:11-05:00"
    assert event["generated_at"].isoformat() == "2013-11-26T16:37:11+00:00"
    assert event["extra"] == {}

    metrics = client.get("/metrics").text
    assert "passpost_xml_recoveries_total 1.0" in metrics
    assert 'passpost_events_produced_total{origin="GENERATE_PASS",outcome="SUCCESS"} 1.0' in metrics


def test_redelivered_postback_keeps_its_event_id(client: TestClient, settings: Settings) -> None:
    first = post(client, VENDOR_EXAMPLE).json()["event_ids"]
    second = post(client, VENDOR_EXAMPLE).json()["event_ids"]
    assert first == second
    records = read_all(settings.kafka_bootstrap_servers, settings.events_topic, expected=2)
    assert [independent_decode(r.value)["event_id"] for r in records] == first + second


def test_form_encoded_body(client: TestClient, settings: Settings) -> None:
    response = client.post(f"{POSTBACK_PATH}?token={TOKEN}", data={"xml": VENDOR_EXAMPLE.decode()})
    assert response.status_code == 200, response.text
    assert len(read_all(settings.kafka_bootstrap_servers, settings.events_topic, expected=1)) == 1


def test_bundle_of_300_notifications_is_one_unit(client: TestClient, settings: Settings) -> None:
    items = "".join(
        f"<NOTIFICATION><STATUSCODE>N80{1 + i % 3}</STATUSCODE><SERIALNUMBER>S{i}</SERIALNUMBER></NOTIFICATION>"
        for i in range(300)
    )
    response = post(client, f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>{items}</POSTBACK>".encode())
    assert response.status_code == 200 and response.json()["events"] == 300
    records = read_all(settings.kafka_bootstrap_servers, settings.events_topic, expected=300)
    assert sorted(r.key for r in records) == sorted(f"S{i}".encode() for i in range(300))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "application/xml", 400, "empty_body"),
        (b"not xml at all", "text/plain", 400, "not_xml"),
        (b"a=1", "application/x-www-form-urlencoded", 400, "missing_xml_field"),
        (b"<POSTBACK><ORIGIN>x</ORIGIN>", "application/xml", 400, "invalid_xml"),
        (b"<!DOCTYPE x><POSTBACK/>", "application/xml", 400, "doctype_forbidden"),
        (b"<ORDER/>", "application/xml", 422, "not_a_postback"),
        (b"<POSTBACK><STATUSCODE>N801</STATUSCODE></POSTBACK>", "application/xml", 422, "missing_origin"),
        (b"<POSTBACK><ORIGIN>A</ORIGIN><STATUSCODE>N8</STATUSCODE><TIMESTAMP>soon</TIMESTAMP></POSTBACK>",
         "text/xml", 422, "invalid_timestamp"),
    ],
)
def test_bad_input_is_refused_with_json_and_kept_as_a_dead_letter(
    client: TestClient, settings: Settings, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = post(client, body, headers={"Content-Type": content_type, "X-Request-ID": "bad-1"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code and response.json()["detail"]

    [letter] = read_all(settings.kafka_bootstrap_servers, settings.dead_letter_topic, expected=1)
    assert letter.value == body
    headers = dict(letter.headers)
    assert headers["error"] == code.encode()
    assert headers["request_id"] == b"bad-1"
    assert headers["content_type"] == content_type.encode()
    assert headers["detail"] and headers["received_at"]
    assert read_all(settings.kafka_bootstrap_servers, settings.events_topic, timeout=1) == []
    assert f'passpost_dead_letters_total{{reason="{code}"}} 1.0' in client.get("/metrics").text


def test_one_bad_item_produces_no_event_at_all(client: TestClient, settings: Settings) -> None:
    body = (b"<POSTBACK><ORIGIN>A</ORIGIN><NOTIFICATION><STATUSCODE>N801</STATUSCODE></NOTIFICATION>"
            b"<NOTIFICATION><SERIALNUMBER>x</SERIALNUMBER></NOTIFICATION></POSTBACK>")
    assert post(client, body).status_code == 422
    assert read_all(settings.kafka_bootstrap_servers, settings.events_topic, timeout=1) == []


@pytest.mark.parametrize(
    "credentials",
    [
        {"params": {"token": TOKEN}},
        {"params": {"token": "next-token"}},
        {"headers": {"Authorization": "Bearer next-token"}},
        {"headers": {"Authorization": "Basic " + base64.b64encode(f"skycore:{TOKEN}".encode()).decode()}},
    ],
)
def test_each_credential_form_is_accepted(client: TestClient, credentials: dict) -> None:
    assert client.post(POSTBACK_PATH, content=VENDOR_EXAMPLE, **credentials).status_code == 200


@pytest.mark.parametrize("credentials", [{}, {"params": {"token": "wrong"}}, {"headers": {"Authorization": "Bearer x"}}])
def test_missing_or_wrong_credentials_are_401_and_write_nothing(
    client: TestClient, settings: Settings, credentials: dict
) -> None:
    response = client.post(POSTBACK_PATH, content=b"garbage", **credentials)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert read_all(settings.kafka_bootstrap_servers, settings.dead_letter_topic, timeout=1) == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(client: TestClient, method: str) -> None:
    response = client.request(method, POSTBACK_PATH)
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_unknown_path_is_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_declared_oversized_body_is_413_and_writes_nothing(kafka_bootstrap: str) -> None:
    settings = make_settings(kafka_bootstrap, max_body_bytes=1000)
    create_topics(kafka_bootstrap, [settings.events_topic, settings.dead_letter_topic])
    with TestClient(create_app(settings)) as client:
        response = post(client, b"<POSTBACK>" + b" " * 2000 + b"</POSTBACK>")
        assert response.status_code == 413 and response.json()["error"] == "body_too_large"
        assert read_all(kafka_bootstrap, settings.dead_letter_topic, timeout=1) == []


def test_streamed_oversized_body_is_refused_before_it_is_read_whole(kafka_bootstrap: str) -> None:
    settings = make_settings(kafka_bootstrap, max_body_bytes=10_000)
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 100 KB in all, without a Content-Length
            sent.append(1)
            yield b"x" * 1000

    with TestClient(create_app(settings)) as client:
        response = client.post(POSTBACK_PATH, content=chunks(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 413


def test_default_limit_accepts_a_body_just_under_one_mebibyte(client: TestClient, settings: Settings) -> None:
    padding = "x" * (1024 * 1024 - 400)
    body = f"<POSTBACK><ORIGIN>A</ORIGIN><STATUSCODE>N801</STATUSCODE><NOTE>{padding}</NOTE></POSTBACK>".encode()
    assert len(body) <= 1024 * 1024
    assert post(client, body).status_code == 200


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    post(client, VENDOR_EXAMPLE)
    post(client, b"", token="wrong")
    text = client.get("/metrics").text
    # The exposition format sorts labels by name.
    assert 'passpost_http_requests_total{method="POST",route="/postbacks/passes",status="200"} 1.0' in text
    assert 'passpost_http_requests_total{method="POST",route="/postbacks/passes",status="401"} 1.0' in text
    assert "passpost_http_request_duration_seconds_bucket" in text
    assert "passpost_kafka_produce_duration_seconds_count" in text


def test_logs_carry_request_ids_but_no_token_or_personal_data(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post(f"{POSTBACK_PATH}?token={TOKEN}", content=VENDOR_EXAMPLE, headers={"X-Request-ID": "trace-9"})
        post(client, VENDOR_EXAMPLE.replace(b"N801", b"N811"), headers={"Authorization": f"Basic {TOKEN}"})
        client.post(POSTBACK_PATH, content=b"<POSTBACK><REFERENCEVALUE>vikmut@mail.com</REFERENCEVALUE></POSTBACK>",
                    params={"token": TOKEN})
    # What the server side logs as `passpost.logs.configure` sets it up: passpost's own
    # loggers at any level, the libraries' from WARNING (httpx here is the test's client).
    server_side = [r for r in caplog.records if r.name.startswith("passpost")
                   or (r.name.startswith(("aiokafka", "uvicorn")) and r.levelno >= logging.WARNING)]
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in server_side)
    assert "trace-9" in text
    assert TOKEN not in text
    assert "vikmut@mail.com" not in text


def test_kafka_that_cannot_confirm_gets_503_with_retry_after(local_kafka) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(local_kafka.bootstrap_servers, produce_timeout_seconds=1.0, retry_after_seconds=7)
    create_topics(local_kafka.bootstrap_servers, [settings.events_topic, settings.dead_letter_topic])
    with TestClient(create_app(settings)) as client:
        assert post(client, VENDOR_EXAMPLE).status_code == 200
        local_kafka.stop()
        response = post(client, VENDOR_EXAMPLE)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"] == "kafka_unavailable"
        bad = post(client, b"<ORDER/>")  # a dead letter that cannot be kept is not refused either
        assert bad.status_code == 503
        assert f'passpost_kafka_produce_errors_total{{error="timeout",topic="{settings.events_topic}"}}' in (
            client.get("/metrics").text
        )
        assert client.get("/readyz").status_code == 503


def test_the_log_line_of_a_refused_request_names_its_error_code(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="passpost.access"):
        post(client, b"<ORDER/>")
        client.post(POSTBACK_PATH, content=VENDOR_EXAMPLE)  # no token
        post(client, VENDOR_EXAMPLE)
    fields = [record.fields for record in caplog.records if record.name == "passpost.access"]  # type: ignore[attr-defined]
    assert [(entry["status"], entry.get("error")) for entry in fields] == [
        (422, "not_a_postback"), (401, "unauthorized"), (200, None)]


def test_the_origin_label_stays_bounded_under_a_thousand_distinct_origins(settings: Settings) -> None:
    app = create_app(settings.replace(known_origins=("ADD_PASS_DATA",)))
    postbacks = "".join(f"<POSTBACK><ORIGIN>FUZZ_{i}</ORIGIN><STATUSCODE>N802</STATUSCODE></POSTBACK>"
                        for i in range(998))
    postbacks += ("<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>"
                  "<POSTBACK><ORIGIN>ADD_PASS_DATA</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>")
    with TestClient(app) as client:
        assert post(client, f"<POSTBACKS>{postbacks}</POSTBACKS>".encode()).json()["events"] == 1000
        series = [line for line in client.get("/metrics").text.splitlines()
                  if line.startswith("passpost_events_produced_total{")]
    assert sorted(series) == [
        'passpost_events_produced_total{origin="ADD_PASS_DATA",outcome="SUCCESS"} 1.0',
        'passpost_events_produced_total{origin="GENERATE_PASS",outcome="SUCCESS"} 1.0',
        'passpost_events_produced_total{origin="other",outcome="FAILURE"} 998.0',
    ]


def test_a_failure_inside_the_postback_route_is_a_json_500_logged_with_its_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    with TestClient(app) as client:
        async def broken_publish(topic: str, records: object) -> None:
            raise RuntimeError("a bug in the publisher")

        app.state.ingress.publisher.publish = broken_publish
        with caplog.at_level(logging.INFO):
            response = post(client, VENDOR_EXAMPLE, headers={"X-Request-ID": "bug-1"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.headers["x-request-id"] == "bug-1"
    failure = next(record for record in caplog.records if record.name == "passpost.ingest")
    assert "bug-1" in failure.getMessage() and failure.exc_info is not None
    access = [record.fields for record in caplog.records if record.name == "passpost.access"]  # type: ignore[attr-defined]
    assert [(entry["status"], entry.get("error")) for entry in access] == [(500, "internal_error")]
    assert 'passpost_http_requests_total{method="POST",route="/postbacks/passes",status="500"} 1.0' in metrics


def test_the_postback_route_answers_with_the_bytes_starlette_would_render(client: TestClient) -> None:
    response = post(client, VENDOR_EXAMPLE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    body = response.json()
    assert response.content == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert body["events"] == 1 and len(body["event_ids"]) == 1


def test_the_postback_route_sees_the_app_in_its_scope_as_every_route_does() -> None:
    """Defect: the POST route bypassed Starlette.__call__, so scope["app"] was never set on that path."""
    import asyncio

    settings = settings_module.defaults().replace(ingest_tokens=(TOKEN,))
    app = create_app(settings, publisher=object())  # type: ignore[arg-type]  (a 401 needs no publisher)
    scope = {"type": "http", "method": "POST", "path": POSTBACK_PATH, "query_string": b"", "headers": [],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401
    assert scope["app"] is app
