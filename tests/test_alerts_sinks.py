"""Alert sinks against real servers: Prometheus Alertmanager and a local webhook receiver."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from passpost.consumers.alerts.engine import Alerter
from passpost.consumers.alerts.grouping import Grouper
from passpost.consumers.alerts.sinks import AlertmanagerSink, Backoff, DeliveryError, LogSink, WebhookSink
from tests.alertmanager_fixtures import active_alerts
from tests.live import free_port
from tests.test_alerts_rules import postback

FAST = Backoff(initial=0.05, cap=0.2, deadline=0.5)


class Clock:
    """Time the test moves: the grouper's repeats and resolutions without waiting."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Receiver:
    """A webhook receiver on a fixed loopback port that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.bodies: list[Any] = []
        self.requests = 0  # every POST, whatever it was answered
        self.answer = 200
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                if receiver.answer == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # Polled often, so that stop() returns at once rather than after serve_forever's default half second.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


def unique_origin() -> str:
    # The session's Alertmanager is shared: each test's alerts carry an origin of their own.
    return f"TEST_{uuid.uuid4().hex[:8]}"


def test_alertmanager_fires_groups_and_resolves(alertmanager_url: str) -> None:
    # Alertmanager judges endsAt against its own clock: a firing alert must end after its now,
    # a resolution before it. The test's clock is set in the past so that both hold without
    # waiting: firing alerts end 30 s from now at the earliest, resolutions end 29 s ago.
    repeat, resolve_after = 60, 120
    clock = Clock()
    clock.advance(30 - repeat - resolve_after)
    origin = unique_origin()
    alerter = Alerter(Grouper(repeat_seconds=repeat, resolve_after_seconds=resolve_after),
                      [AlertmanagerSink(alertmanager_url, backoff=FAST)], clock=clock)

    async def scenario() -> None:
        storm = [postback("N811", origin=origin, n=n, at=clock.now) for n in range(200)]
        assert await alerter.handle(storm[:100]) == 1
        (alert,) = active_alerts(alertmanager_url, origin=origin)
        assert alert["labels"] == {"alertname": "PasspostOutOfCredits", "origin": origin, "status_code": "N811",
                                   "severity": "critical"}
        assert alert["annotations"]["count"] == "100" and alert["status"]["state"] in {"active", "unprocessed"}
        assert "out of credits" in alert["annotations"]["summary"]
        assert "someone@example.com" not in json.dumps(alert)

        assert await alerter.handle(storm[100:]) == 0  # within repeat_seconds: counted, not sent

        # An unknown code alerts; N801 never does.
        clock.advance(1)
        assert await alerter.handle([postback("Z123", origin=origin, at=clock.now),
                                     postback("N801", origin=origin, n=1, at=clock.now)]) == 1
        alerts = active_alerts(alertmanager_url, origin=origin)
        assert sorted(a["labels"]["status_code"] for a in alerts) == ["N811", "Z123"]
        (unknown,) = [a for a in alerts if a["labels"]["status_code"] == "Z123"]
        assert unknown["labels"]["alertname"] == "PasspostUnknownStatusCode"
        assert "vendor changed something" in unknown["annotations"]["summary"]

        clock.advance(repeat - 1)
        assert await alerter.tick() == 1  # the repeat carries the new count to the same alert
        (alert,) = [a for a in active_alerts(alertmanager_url, origin=origin) if a["labels"]["status_code"] == "N811"]
        assert alert["annotations"]["count"] == "200"

        clock.advance(resolve_after - repeat + 1)  # resolve_after_seconds since the last failure
        assert await alerter.tick() == 2
        assert clock.now < datetime.now(timezone.utc)  # what makes the resolutions resolve at once
        assert active_alerts(alertmanager_url, origin=origin) == []  # resolved: endsAt in the past
        await alerter.aclose()

    asyncio.run(scenario())


def test_webhook_payload_is_shaped_like_alertmanagers(receiver: Receiver) -> None:
    clock = Clock()
    alerter = Alerter(Grouper(resolve_after_seconds=10), [WebhookSink(receiver.url, backoff=FAST)], clock=clock)

    async def scenario() -> None:
        await alerter.handle([postback("N803", n=n, at=clock.now) for n in range(3)])
        clock.advance(10)
        await alerter.tick()
        await alerter.aclose()

    asyncio.run(scenario())
    firing, resolved = receiver.bodies
    assert firing["version"] == "4" and firing["status"] == "firing" and firing["receiver"] == "passpost"
    assert firing["groupKey"].startswith("{}:{") and "status_code='N803'" in firing["groupKey"]
    (alert,) = firing["alerts"]
    assert alert["labels"]["severity"] == "critical" and alert["annotations"]["count"] == "3"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["fingerprint"]
    assert firing["commonLabels"] == alert["labels"]
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"


def test_webhook_slack_format_is_a_text_body(receiver: Receiver) -> None:
    alerter = Alerter(Grouper(), [WebhookSink(receiver.url, format="slack", backoff=FAST)])
    asyncio.run(alerter.handle([postback("N811")]))
    asyncio.run(alerter.aclose())
    (body,) = receiver.bodies
    assert set(body) == {"text"}
    assert body["text"].startswith("[FIRING:critical]") and "1 postback(s)" in body["text"]
    assert "SN0" in body["text"] and "someone@example.com" not in body["text"]


def test_a_webhook_down_for_a_while_loses_nothing(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    alerter = Alerter(Grouper(), [WebhookSink(receiver.url, backoff=FAST)], clock=clock)
    batch = [postback("N811", n=n, at=clock.now) for n in range(50)]

    def refused() -> int:
        return sum("retrying in" in record.getMessage() for record in caplog.records)

    async def come_back_after_refusals(count: int) -> None:
        while refused() < count:
            await asyncio.sleep(0.01)
        receiver.start()

    async def scenario() -> None:
        receiver.stop()
        # Down beyond the sink's deadline: the batch fails, so the runtime would not commit it...
        with pytest.raises(DeliveryError, match="webhook: still failing after .* ConnectError"):
            await alerter.handle(batch)
        assert alerter.grouper.groups == {}  # ...and the state did not move on either.
        # Down for less than the deadline: the retries bridge the gap.
        patient = WebhookSink(receiver.url, backoff=Backoff(initial=0.05, cap=0.2, deadline=10))
        alerter.sinks = (patient,)
        caplog.clear()
        comeback = asyncio.create_task(come_back_after_refusals(2))
        assert await alerter.handle(batch) == 1  # the runtime offers the same batch again
        await comeback
        assert refused() >= 2 and "ConnectError" in caplog.text  # it was down while the batch was offered
        await patient.aclose()

    with caplog.at_level("WARNING", logger="passpost.alerts"):
        asyncio.run(scenario())
    (body,) = receiver.bodies
    assert body["alerts"][0]["annotations"]["count"] == "50"


def test_5xx_is_retried_and_other_4xx_fail_at_once(receiver: Receiver) -> None:
    async def scenario() -> None:
        sink = WebhookSink(receiver.url, backoff=FAST)
        grouper = Grouper()
        grouper.observe(postback("N811"), datetime.now(timezone.utc))
        notifications = grouper.due(datetime.now(timezone.utc))
        receiver.answer = 503
        with pytest.raises(DeliveryError, match=r"still failing after [2-9]\d* attempts: HTTP 503"):
            await sink.send(notifications)
        assert receiver.requests >= 2
        receiver.answer = 400
        receiver.requests = 0
        with pytest.raises(DeliveryError, match="HTTP 400"):
            await sink.send(notifications)
        assert receiver.requests == 1  # no retry
        await sink.aclose()

    asyncio.run(scenario())


def test_the_log_sink_writes_one_line_per_notification(caplog: pytest.LogCaptureFixture) -> None:
    alerter = Alerter(Grouper(), [LogSink()])
    with caplog.at_level("INFO", logger="passpost.alerts"):
        asyncio.run(alerter.handle([postback("N811", n=n) for n in range(5)] + [postback("N801")]))
    (record,) = caplog.records
    assert record.getMessage().startswith("alert [FIRING:critical]")
    assert record.fields["count"] == 5 and record.fields["status_code"] == "N811"
    assert "someone@example.com" not in caplog.text


def test_metrics_count_deliveries_failures_and_latency(receiver: Receiver) -> None:
    clock = Clock()
    alerter = Alerter(Grouper(), [WebhookSink(receiver.url, backoff=FAST), LogSink()], clock=clock)
    asyncio.run(alerter.handle([postback("N811", at=clock.now - timedelta(seconds=0.2))]))
    receiver.stop()
    with pytest.raises(DeliveryError):
        asyncio.run(alerter.handle([postback("N803")]))
    sample = alerter.metrics.registry.get_sample_value
    assert sample("passpost_alerts_fired_total", {"severity": "critical"}) == 1
    assert sample("passpost_alerts_delivered_total", {"sink": "webhook"}) == 1
    assert sample("passpost_alerts_delivered_total", {"sink": "log"}) == 2  # the log took the failed step too
    assert sample("passpost_alerts_failed_total", {"sink": "webhook"}) == 1
    assert sample("passpost_alert_delivery_seconds_count", {"sink": "webhook"}) == 1
    # From the event's received_at to the delivery, on the alerter's clock.
    assert sample("passpost_alert_delivery_seconds_sum", {"sink": "webhook"}) == pytest.approx(0.2)
