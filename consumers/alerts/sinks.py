"""Where notifications go: Alertmanager (API v2), a JSON webhook, the log.

Every sink's ``send`` either delivers the whole list or raises ``DeliveryError``; it
never drops a notification quietly. HTTP sinks retry connection errors, timeouts, 429
and 5xx with capped exponential backoff until their deadline, then raise, so the
consumer does not commit past an alert that was not delivered. Any other 4xx is our
bug (a payload the receiver refuses) and raises at once: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from passpost.backoff import Backoff, Retry
from passpost.consumers.runtime.tracing import sink_span

from .grouping import Notification

__all__ = ["AlertmanagerSink", "Backoff", "DeliveryError", "LogSink", "Sink", "WebhookSink"]

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("passpost.alerts")


class DeliveryError(RuntimeError):
    """A sink could not take notifications; ``str()`` names the sink and the last problem."""


class Sink(Protocol):
    name: str

    async def send(self, notifications: Sequence[Notification]) -> None: ...

    async def aclose(self) -> None: ...


# Jitter keeps several consumers from retrying a recovering receiver in lockstep.
DEFAULT_BACKOFF = Backoff(initial=0.2, cap=5.0, deadline=30.0, jitter=True)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _HttpSink:
    name = "http"

    def __init__(self, url: str, *, backoff: Backoff = DEFAULT_BACKOFF, timeout: float = 5.0,
                 client: httpx.AsyncClient | None = None, stopping: asyncio.Event | None = None) -> None:
        self.url = url
        self.backoff = backoff
        self.stopping = stopping  # the consumer's: once set, no more waiting to retry
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None

    async def _post(self, body: Any) -> None:
        # One HTTP CLIENT span per delivery, retries included: the host and port only, never the URL, whose
        # path may be a secret (a Slack webhook's is).
        url = httpx.URL(self.url)
        with sink_span("POST", "client", {"http.request.method": "POST", "server.address": url.host,
                                          "server.port": url.port or (443 if url.scheme == "https" else 80),
                                          "passpost.alert.sink": self.name}) as span:
            await self._post_retrying(body, span)

    async def _post_retrying(self, body: Any, span: Span | None) -> None:
        retry = Retry(self.backoff, self.stopping)
        while True:
            try:
                response = await self._client.post(self.url, json=body)
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status_code)
                    if retry.attempts:
                        span.set_attribute("http.request.resend_count", retry.attempts)
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code} from {self.url}: {response.text[:200]!r}"
                if response.status_code < 500 and response.status_code != 429:
                    raise DeliveryError(f"{self.name}: {problem}")
            except httpx.TransportError as error:
                problem = f"{type(error).__name__} posting to {self.url}: {error}"
            delay = retry.next_delay()
            if delay is not None:
                log.warning("alert sink %s: %s; retrying in %.1f s", self.name, problem, delay)
            if delay is None or not await retry.wait(delay):
                why = "stopping" if retry.stopped else f"still failing after {retry.attempts + 1} attempts"
                raise DeliveryError(f"{self.name}: {why}: {problem}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class AlertmanagerSink(_HttpSink):
    """``POST {url}/api/v2/alerts``: Alertmanager's own grouping, silences and routes apply."""

    name = "alertmanager"

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url.rstrip("/") + "/api/v2/alerts", **options)

    async def send(self, notifications: Sequence[Notification]) -> None:
        if notifications:
            await self._post([self.alert(notification) for notification in notifications])

    @staticmethod
    def alert(notification: Notification) -> dict[str, Any]:
        # Firing alerts carry an endsAt in the future: if passpost stops talking,
        # Alertmanager resolves them itself rather than keeping them forever.
        # Resolved ones carry an endsAt in the past, which is how API v2 resolves.
        return {"labels": dict(notification.labels), "annotations": notification.annotations,
                "startsAt": _rfc3339(notification.starts_at), "endsAt": _rfc3339(notification.ends_at)}


# Alertmanager's webhook writes the zero time as endsAt of a firing alert.
_ZERO_TIME = "0001-01-01T00:00:00Z"


class WebhookSink(_HttpSink):
    """One POST per notification, shaped like Alertmanager's webhook (or Slack's ``text``)."""

    name = "webhook"

    def __init__(self, url: str, *, format: Literal["alertmanager", "slack"] = "alertmanager",
                 **options: Any) -> None:
        super().__init__(url, **options)
        self.format = format

    async def send(self, notifications: Sequence[Notification]) -> None:
        render = self.slack if self.format == "slack" else self.payload
        for notification in notifications:
            await self._post(render(notification))

    @staticmethod
    def payload(notification: Notification) -> dict[str, Any]:
        labels = dict(notification.labels)
        alert = {
            "status": notification.status, "labels": labels, "annotations": notification.annotations,
            "startsAt": _rfc3339(notification.starts_at),
            "endsAt": _rfc3339(notification.ends_at) if notification.status == "resolved" else _ZERO_TIME,
            "generatorURL": "", "fingerprint": notification.fingerprint,
        }
        return {
            "version": "4", "groupKey": _group_key(labels), "truncatedAlerts": 0,
            "status": notification.status, "receiver": "passpost", "groupLabels": labels,
            "commonLabels": labels, "commonAnnotations": notification.annotations, "externalURL": "",
            "alerts": [alert],
        }

    @staticmethod
    def slack(notification: Notification) -> dict[str, str]:
        return {"text": _headline(notification) + "\n" + notification.description}


def _group_key(labels: Mapping[str, str]) -> str:
    # Alertmanager's form: route path, then the group labels.
    inner = ",".join(f"{name}={value!r}" for name, value in sorted(labels.items()))
    return "{}:{" + inner + "}"


def _headline(notification: Notification) -> str:
    severity = notification.labels.get("severity", "")
    return f"[{notification.status.upper()}:{severity}] {notification.summary} ({notification.new_events} new)"


class LogSink:
    """One log line per notification; never fails, which is why it is the `passpost dev` sink."""

    name = "log"

    async def send(self, notifications: Sequence[Notification]) -> None:
        for notification in notifications:
            level = logging.INFO if notification.status == "resolved" else logging.WARNING
            # Labels and counts only: a notification carries no personal data to leak.
            log.log(level, "alert %s", _headline(notification), extra={"fields": {
                "fingerprint": notification.fingerprint, **notification.labels, "count": notification.count,
                "first_seen": notification.annotations["first_seen"],
                "last_seen": notification.annotations["last_seen"],
                "samples": ",".join(notification.samples)}})

    async def aclose(self) -> None:
        return None
