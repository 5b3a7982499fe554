"""Grouping (consumers/alerts/grouping.py): storms become a few notifications with counts."""

from __future__ import annotations

import json
from datetime import timedelta

from passpost.consumers.alerts.grouping import Grouper, Notification
from tests.test_alerts_rules import T0, postback

SECOND = timedelta(seconds=1)


def test_a_storm_of_1000_failures_is_a_handful_of_notifications_with_correct_counts() -> None:
    grouper = Grouper(repeat_seconds=60, resolve_after_seconds=300)
    sent: list[Notification] = []
    now = T0
    # 1000 failures over 200 s in batches of 25 (750 N811, 250 N802), with 1000 successes.
    for batch in range(40):
        for i in range(25):
            n = batch * 25 + i
            code = "N811" if n % 4 else "N802"
            grouper.observe(postback(code, at=now, n=n), now)
            grouper.observe(postback("N801", at=now, n=n), now)
        sent += grouper.due(now)
        now += 5 * SECOND
    while grouper.groups:  # quiet from here on: everything resolves
        now += SECOND
        sent += grouper.due(now)

    assert len(sent) <= 16, [(n.labels["status_code"], n.status, n.count) for n in sent]
    resolved = {n.labels["status_code"] + "/" + n.labels["severity"]: n for n in sent if n.status == "resolved"}
    assert resolved["N811/critical"].count == 750
    # N802 escalates: the first nine are a warning, the rest critical.
    assert resolved["N802/warning"].count == 9 and resolved["N802/critical"].count == 241
    credits = [n for n in sent if n.labels["status_code"] == "N811"]
    assert credits[0].status == "firing" and credits[0].count == 18 and credits[0].new_events == 18
    assert [n.count for n in credits] == sorted(n.count for n in credits)
    assert sum(n.new_events for n in credits) == 750
    # Each firing update pushes the expiry Alertmanager gets further out; the resolution ends it.
    assert all(b.ends_at >= a.ends_at for a, b in zip(credits[:-1], credits[1:-1]))
    assert credits[-1].status == "resolved" and credits[-1].ends_at < credits[-2].ends_at
    final = resolved["N811/critical"]
    assert final.first_seen == T0 and final.last_seen == T0 + 195 * SECOND and final.starts_at == T0
    assert final.samples == ("SN1", "SN2", "SN3", "SN5", "SN6")
    assert final.annotations["count"] == "750"
    # Re-notifications come no closer than repeat_seconds.
    firing = [n for n in sent if n.status == "firing" and n.labels["status_code"] == "N811"]
    # Sent at t=0, 60, 120, 180 and 240 (the batches of 185-195 s); each reports the events
    # since the previous one, so the oldest unreported events are those of t=0, 5, 65, 125, 185.
    assert [n.pending_since - T0 for n in firing] == [timedelta(seconds=s) for s in (0, 5, 65, 125, 185)]


def test_personal_data_never_reaches_a_notification() -> None:
    grouper = Grouper()
    grouper.observe(postback("N811"), T0)
    (notification,) = grouper.due(T0)
    assert "someone@example.com" not in json.dumps(notification.annotations) + repr(notification)
    assert "someone@example.com" not in json.dumps(grouper.to_state())


def test_the_first_event_is_notified_at_once_and_resolution_follows_the_quiet_period() -> None:
    grouper = Grouper(repeat_seconds=10, resolve_after_seconds=30)
    grouper.observe(postback("N803"), T0)
    (fired,) = grouper.due(T0)
    assert fired.status == "firing" and fired.count == 1 and fired.ends_at > T0 + 30 * SECOND
    assert grouper.due(T0 + 29 * SECOND) == []
    (resolved,) = grouper.due(T0 + 30 * SECOND)
    assert resolved.status == "resolved" and resolved.ends_at == T0 + 30 * SECOND and resolved.count == 1
    assert resolved.fingerprint == fired.fingerprint and not grouper.groups
    # A new failure later is a new alert (new startsAt), with the same identity.
    grouper.observe(postback("N803", at=T0 + 60 * SECOND, n=2), T0 + 60 * SECOND)
    (again,) = grouper.due(T0 + 60 * SECOND)
    assert again.status == "firing" and again.starts_at == T0 + 60 * SECOND and again.count == 1
    assert again.fingerprint == fired.fingerprint


def test_a_redelivered_postback_counts_once() -> None:
    grouper = Grouper()
    for _ in range(3):
        grouper.observe(postback("N811"), T0)  # same content, same event_id
    for _ in range(20):  # nor towards N802's burst threshold
        grouper.observe(postback("N802"), T0)
    notifications = grouper.due(T0)
    assert sorted((n.labels["status_code"], n.labels["severity"], n.count) for n in notifications) == [
        ("N802", "warning", 1), ("N811", "critical", 1)]
    assert len(grouper.to_state()["seen"]) == 2


def test_successes_are_not_remembered() -> None:
    grouper = Grouper()
    for n in range(100):
        grouper.observe(postback("N801", n=n), T0)
    assert grouper.to_state()["seen"] == [] and grouper.due(T0) == []


def test_a_backlog_of_old_events_does_not_resolve_between_batches() -> None:
    """A consumer catching up on hour-old events: quiet time is measured when they are processed."""
    grouper = Grouper(repeat_seconds=60, resolve_after_seconds=300)
    old = T0 - timedelta(hours=1)
    now = T0
    statuses = []
    for n in range(10):
        grouper.observe(postback("N811", at=old + n * SECOND, n=n), now)
        statuses += [note.status for note in grouper.due(now)]
        now += SECOND
    assert statuses == ["firing"]


def test_state_survives_a_restart_without_notifying_again() -> None:
    grouper = Grouper(repeat_seconds=60, resolve_after_seconds=300)
    for n in range(5):
        grouper.observe(postback("N802", n=n), T0)
    first = grouper.due(T0)
    restarted = Grouper(repeat_seconds=60, resolve_after_seconds=300)
    restarted.load_state(json.loads(json.dumps(grouper.to_state())))
    assert restarted.due(T0 + SECOND) == []
    restarted.observe(postback("N802", n=4), T0 + SECOND)  # already seen before the restart
    for n in range(5, 10):  # the escalation window survived too: the 10th is critical
        restarted.observe(postback("N802", n=n), T0 + SECOND)
    later = restarted.due(T0 + 61 * SECOND)
    assert {(n.labels["severity"], n.count) for n in later} == {("warning", 9), ("critical", 1)}
    assert {n.fingerprint for n in later} >= {first[0].fingerprint}
