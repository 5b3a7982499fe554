"""Turning a stream of alerting events into a few notifications per alert group.

Pure logic: no I/O, and every method takes ``now`` so tests (and a replay) control time.

A group is one set of labels (alertname, origin, status_code, severity). Its first
event is notified at the next ``due()``, which the consumer calls after every batch and
about once a second, so an alert leaves within a second of its event; the events of one
batch (a storm arrives as large batches) share that first notification. After that the
group is notified again with its updated counts at most every ``repeat_seconds``, and
only if its count changed. When no event has touched it for ``resolve_after_seconds``
it resolves: one last notification with the final counts, then it is forgotten.

Quiet time is measured on the wall clock at which events were *processed*, not their
``received_at``: a consumer catching up on an hour-old backlog must not resolve and
re-fire its groups between two batches.

Identity: a group's fingerprint is a hash of its labels alone, so a restarted consumer
that rebuilds a group sends the same identity (Alertmanager keys alerts by labels too).
Every sample is a pass identifier (serial number, custom pass id or pass data id);
``reference_value`` is personal data and never leaves the event.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from passpost.schemas.event import PassPostback

from .rules import RuleSet

__all__ = ["Group", "Grouper", "Notification", "fingerprint"]

SAMPLE_SIZE = 5
# Event ids remembered to drop the vendor's re-deliveries (it retries for ~25 minutes).
REMEMBERED_EVENT_IDS = 10_000


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable identity of an alert: the same labels give the same id in every process."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass
class Group:
    labels: dict[str, str]
    summary: str
    first_seen: datetime
    last_seen: datetime
    active_at: datetime  # wall clock of the last event processed for it
    count: int = 0
    samples: list[str] = field(default_factory=list)
    notified_count: int = 0
    notified_at: datetime | None = None
    # received_at of the oldest event no notification has reported yet: the delivery
    # latency of a notification is measured from it.
    pending_since: datetime | None = None
    # The trace of the request that made its first event (its record's traceparent), if it had one.
    trace_id: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


@dataclass(frozen=True)
class Notification:
    fingerprint: str
    status: Literal["firing", "resolved"]
    labels: Mapping[str, str]
    summary: str
    starts_at: datetime
    # Firing: when the alert should expire if passpost goes silent (Alertmanager needs
    # one); resolved: when it was resolved.
    ends_at: datetime
    count: int
    new_events: int
    first_seen: datetime
    last_seen: datetime
    samples: tuple[str, ...]
    pending_since: datetime | None
    trace_id: str | None = None
    trace_url: str | None = None  # PASSPOST_TRACE_URL_TEMPLATE with the trace id

    @property
    def description(self) -> str:
        samples = ", ".join(self.samples) or "none"
        state = "resolved after" if self.status == "resolved" else "so far"
        return (f"{self.count} postback(s) {state}, first {_iso(self.first_seen)}, last {_iso(self.last_seen)}; "
                f"sample passes: {samples}")

    @property
    def annotations(self) -> dict[str, str]:
        annotations = {"summary": self.summary, "description": self.description, "count": str(self.count),
                       "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen),
                       "samples": ",".join(self.samples)}
        if self.trace_id is not None:  # where an operator finds the first event's way through the pipeline
            annotations["trace_id"] = self.trace_id
            if self.trace_url is not None:
                annotations["trace_url"] = self.trace_url
        return annotations


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _pass_id(event: PassPostback) -> str | None:
    return event.serial_number or event.custom_pass_id or event.pass_data_id


class Grouper:
    def __init__(self, rules: RuleSet | None = None, *, repeat_seconds: float = 60.0,
                 resolve_after_seconds: float = 300.0, trace_url_template: str | None = None) -> None:
        self.trace_url_template = trace_url_template
        self.rules = rules if rules is not None else RuleSet()
        self.repeat = timedelta(seconds=repeat_seconds)
        self.resolve_after = timedelta(seconds=resolve_after_seconds)
        self.groups: dict[str, Group] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def copy(self) -> Grouper:
        """An independent copy: the consumer works on one and keeps it only once delivered."""
        return copy.deepcopy(self)

    def observe(self, event: PassPostback, now: datetime, trace_id: Callable[[], str | None] | None = None) -> bool:
        """Count ``event`` if it alerts; False for non-alerting events and re-deliveries. ``trace_id`` names
        the trace the event was made in: asked only of the first event of a group."""
        # Only alerting events are remembered: successes need no de-duplication, and the
        # ids are saved with the state after every batch.
        if event.event_id in self._seen or not self.rules.alerts(event):
            return False
        self._seen[event.event_id] = None
        if len(self._seen) > REMEMBERED_EVENT_IDS:
            self._seen.popitem(last=False)
        match = self.rules.match(event)
        if match is None:
            return False
        labels = match.labels
        key = fingerprint(labels)
        at = event.received_at
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(labels, match.summary, first_seen=at, last_seen=at, active_at=now,
                                             trace_id=None if trace_id is None else trace_id())
        group.count += 1
        group.first_seen = min(group.first_seen, at)
        group.last_seen = max(group.last_seen, at)
        group.active_at = max(group.active_at, now)
        if group.pending_since is None or at < group.pending_since:
            group.pending_since = at
        pass_id = _pass_id(event)
        if pass_id and len(group.samples) < SAMPLE_SIZE and pass_id not in group.samples:
            group.samples.append(pass_id)
        return True

    def due(self, now: datetime) -> list[Notification]:
        """Notifications to send now; the groups record them as sent."""
        notifications = []
        for key, group in list(self.groups.items()):
            if now - group.active_at >= self.resolve_after:
                del self.groups[key]
                notifications.append(self._notify(group, "resolved", now, ends_at=now))
            elif group.notified_at is None or (group.count > group.notified_count
                                               and now - group.notified_at >= self.repeat):
                notifications.append(self._notify(group, "firing", now,
                                                  ends_at=group.active_at + self.resolve_after + self.repeat))
        return notifications

    def _notify(self, group: Group, status: Literal["firing", "resolved"], now: datetime,
                ends_at: datetime) -> Notification:
        notification = Notification(
            fingerprint=group.fingerprint, status=status, labels=dict(group.labels), summary=group.summary,
            starts_at=group.first_seen, ends_at=ends_at, count=group.count,
            new_events=group.count - group.notified_count, first_seen=group.first_seen,
            last_seen=group.last_seen, samples=tuple(group.samples), pending_since=group.pending_since,
            trace_id=group.trace_id,
            trace_url=None if group.trace_id is None or self.trace_url_template is None
            else self.trace_url_template.replace("{trace_id}", group.trace_id))
        group.notified_count, group.notified_at, group.pending_since = group.count, now, None
        return notification

    # --- persistence: plain JSON-able data, so a store needs to know nothing of these classes ---

    def to_state(self) -> dict[str, Any]:
        return {
            "groups": [_group_state(group) for group in self.groups.values()],
            "seen": list(self._seen),
            "windows": self.rules.windows_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.groups = {}
        for raw in state.get("groups", []):
            group = Group(
                labels=dict(raw["labels"]), summary=raw["summary"],
                first_seen=datetime.fromisoformat(raw["first_seen"]),
                last_seen=datetime.fromisoformat(raw["last_seen"]),
                active_at=datetime.fromisoformat(raw["active_at"]), count=raw["count"],
                samples=list(raw["samples"]), notified_count=raw["notified_count"],
                notified_at=_maybe_time(raw["notified_at"]), pending_since=_maybe_time(raw["pending_since"]),
                trace_id=raw.get("trace_id"))  # absent from state files written before issue 19
            self.groups[group.fingerprint] = group
        self._seen = OrderedDict.fromkeys(state.get("seen", []))
        self.rules.load_windows_state(state.get("windows", []))


def _maybe_time(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


def _group_state(group: Group) -> dict[str, Any]:
    return {
        "labels": group.labels, "summary": group.summary, "first_seen": group.first_seen.isoformat(),
        "last_seen": group.last_seen.isoformat(), "active_at": group.active_at.isoformat(), "count": group.count,
        "samples": group.samples, "notified_count": group.notified_count,
        "notified_at": None if group.notified_at is None else group.notified_at.isoformat(),
        "pending_since": None if group.pending_since is None else group.pending_since.isoformat(),
        "trace_id": group.trace_id,
    }
