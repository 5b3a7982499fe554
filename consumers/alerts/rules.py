"""Which postbacks alert, and how loudly.

A rule matches status codes (shell-style patterns such as ``E*``, case-insensitive),
outcomes and optionally origins, and says whether a match alerts, at which severity,
and whether a burst escalates it (``count`` matches within ``window_seconds``). The
first matching rule wins. Rules from ``PASSPOST_ALERT_RULES_FILE`` (TOML, or YAML when
the name ends in ``.yaml``/``.yml``) are tried before the built-in ones, so a file
overriding one code need not repeat the rest; ``defaults = false`` in the file drops
the built-ins altogether.

Escalation counts in the events' own ``received_at`` time, not the wall clock, so a
replay of the same events after a restart takes the same decisions.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import functools
import tomllib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from passpost.errors import ConfigurationError, one_line
from passpost.schemas.event import Outcome, PassPostback

__all__ = ["DEFAULT_RULES", "Match", "Rule", "RuleSet", "RulesError", "Severity", "load_rules", "rules_setting"]

# Status codes are vendor text: an UNKNOWN one becomes a label, so bound its size.
MAX_LABEL_LENGTH = 64


class RulesError(ConfigurationError, ValueError):
    """A rules file passpost cannot use. ``str()`` is one line naming the file and the problem."""


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Escalation:
    """More than ``count - 1`` matches within ``window_seconds`` raise the severity."""

    count: int
    window_seconds: float
    severity: Severity


@dataclass(frozen=True)
class Rule:
    codes: tuple[str, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    origins: tuple[str, ...] = ()
    alert: bool = True
    severity: Severity = Severity.WARNING
    alertname: str = "PasspostPassFailure"
    summary: str = "Pass generation failed with {status_code} ({origin})"
    escalate: Escalation | None = None

    def matches(self, status_code: str, outcome: Outcome, origin: str) -> bool:
        if self.codes and not any(fnmatch.fnmatchcase(status_code, pattern) for pattern in self.codes):
            return False
        if self.outcomes and outcome not in self.outcomes:
            return False
        return not self.origins or origin in self.origins


@dataclass(frozen=True)
class Match:
    """What one alerting event contributes to: the labels identify its alert group."""

    alertname: str
    origin: str
    status_code: str
    severity: Severity
    summary: str

    @property
    def labels(self) -> dict[str, str]:
        return {"alertname": self.alertname, "origin": self.origin, "status_code": self.status_code,
                "severity": self.severity.value}


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(codes=("N801",), alert=False),
    Rule(outcomes=(Outcome.SUCCESS,), alert=False),
    Rule(codes=("N811",), severity=Severity.CRITICAL, alertname="PasspostOutOfCredits",
         summary="Skycore account is out of credits ({origin}): every further pass will fail"),
    Rule(codes=("N803",), severity=Severity.CRITICAL, alertname="PasspostGenerationLimit",
         summary="Skycore pass generation limit reached ({origin})"),
    # One N802 is noise worth a look; many in a short time is an outage.
    Rule(codes=("N802",), severity=Severity.WARNING,
         summary="Pass generation failed (N802, {origin})",
         escalate=Escalation(count=10, window_seconds=60.0, severity=Severity.CRITICAL)),
    Rule(codes=("E*",), severity=Severity.WARNING, summary="Pass generation error {status_code} ({origin})"),
    Rule(outcomes=(Outcome.FAILURE,), severity=Severity.WARNING),
    Rule(outcomes=(Outcome.UNKNOWN,), severity=Severity.WARNING, alertname="PasspostUnknownStatusCode",
         summary="Unknown status code {status_code} ({origin}): the vendor changed something"),
)


def _label(text: str | None) -> str:
    return (text or "").strip()[:MAX_LABEL_LENGTH]


@dataclass
class RuleSet:
    """Rules in order, plus the sliding windows their escalations need.

    Not thread-safe; one per consumer.
    """

    rules: tuple[Rule, ...] = DEFAULT_RULES
    # (rule index, origin, status code) -> received_at of recent matches, oldest first;
    # at most ``count`` entries are kept, which is all the threshold needs.
    _windows: dict[tuple[int, str, str], deque[datetime]] = field(default_factory=dict)

    def alerts(self, event: PassPostback) -> bool:
        """Whether ``event`` alerts at all; unlike ``match`` it counts nothing towards a burst."""
        found = self._first(event)
        return found is not None and found[1].alert

    def match(self, event: PassPostback) -> Match | None:
        """The alert ``event`` contributes to, or None; counts it towards its rule's burst window."""
        found = self._first(event)
        if found is None or not found[1].alert:
            return None
        index, rule = found
        status_code, origin = _label(event.status_code).upper(), _label(event.origin)
        severity = rule.severity
        if rule.escalate is not None and self._burst(index, rule.escalate, origin, status_code, event.received_at):
            severity = rule.escalate.severity
        return Match(rule.alertname, origin, status_code, severity,
                     rule.summary.format(status_code=status_code, origin=origin))

    def _first(self, event: PassPostback) -> tuple[int, Rule] | None:
        status_code, origin = _label(event.status_code).upper(), _label(event.origin)
        for index, rule in enumerate(self.rules):
            if rule.matches(status_code, event.outcome, origin):
                return index, rule
        return None

    def _burst(self, index: int, escalation: Escalation, origin: str, code: str, at: datetime) -> bool:
        window = self._windows.setdefault((index, origin, code), deque(maxlen=escalation.count))
        window.append(at)
        horizon = at - timedelta(seconds=escalation.window_seconds)
        while window and window[0] <= horizon:
            window.popleft()
        return len(window) >= escalation.count

    def windows_state(self) -> list[list[Any]]:
        return [[index, origin, code, [at.isoformat() for at in window]]
                for (index, origin, code), window in self._windows.items()]

    def load_windows_state(self, state: Iterable[Sequence[Any]]) -> None:
        self._windows = {}
        for index, origin, code, moments in state:
            escalation = self.rules[index].escalate if index < len(self.rules) else None
            if escalation is None:  # the rules changed since the state was saved
                continue
            self._windows[(index, origin, code)] = deque(
                (datetime.fromisoformat(at) for at in moments), maxlen=escalation.count)


# --- rules files ---------------------------------------------------------------------------


def load_rules(path: str | Path | None) -> RuleSet:
    """The rule set for ``PASSPOST_ALERT_RULES_FILE`` (None: built-in defaults only).

    A file is parsed once per process while it is unchanged: the CLI checks it at start-up
    (``rules_setting``) and the alerts consumer then gets the same rules. Each call returns a
    new ``RuleSet`` (it keeps escalation windows of its own)."""
    if path is None:
        return RuleSet()
    path = Path(path)
    try:
        stat = path.stat()
        return RuleSet(_parse_file(path, stat.st_mtime_ns, stat.st_size))
    except RulesError:
        raise
    except (OSError, ValueError, TypeError) as error:
        raise RulesError(f"{path}: {one_line(error)}") from None


def rules_setting(path: str | None) -> RuleSet:
    """``load_rules`` for the setting: the one-line error names ``PASSPOST_ALERT_RULES_FILE`` too."""
    try:
        return load_rules(path)
    except RulesError as error:
        raise RulesError(f"PASSPOST_ALERT_RULES_FILE: {error}") from None


@functools.lru_cache(maxsize=8)
def _parse_file(path: Path, mtime_ns: int, size: int) -> tuple[Rule, ...]:
    rules, keep_defaults = _parse_document(_read(path))
    return rules + (DEFAULT_RULES if keep_defaults else ())


def _read(path: Path) -> Any:
    text = path.read_text("utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml  # only needed for YAML rules files

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"not valid YAML: {error}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"not valid TOML: {error}") from None


_RULE_KEYS = {"codes", "outcomes", "origins", "alert", "severity", "alertname", "summary", "escalate"}


def _parse_document(document: Any) -> tuple[tuple[Rule, ...], bool]:
    if not isinstance(document, Mapping):
        raise ValueError("expected a table with a `rules` list")
    unknown = set(document) - {"rules", "defaults"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (expected `rules`, `defaults`)")
    keep_defaults = document.get("defaults", True)
    if not isinstance(keep_defaults, bool):
        raise ValueError("`defaults` must be true or false")
    entries = document.get("rules", [])
    if not isinstance(entries, list):
        raise ValueError("`rules` must be a list of tables")
    return tuple(_parse_rule(number, entry) for number, entry in enumerate(entries, start=1)), keep_defaults


def _parse_rule(number: int, entry: Any) -> Rule:
    where = f"rule {number}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a table")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    codes = tuple(code.upper() for code in _strings(where, "codes", entry.get("codes", [])))
    outcomes = tuple(_enum(where, "outcomes", Outcome, value.upper())
                     for value in _strings(where, "outcomes", entry.get("outcomes", [])))
    if not codes and not outcomes:
        raise ValueError(f"{where}: needs `codes` or `outcomes`")
    alert = entry.get("alert", True)
    if not isinstance(alert, bool):
        raise ValueError(f"{where}: `alert` must be true or false")
    rule = Rule(codes=codes, outcomes=outcomes, origins=_strings(where, "origins", entry.get("origins", [])),
                alert=alert, severity=_enum(where, "severity", Severity, entry.get("severity", "warning")),
                escalate=_escalation(where, entry.get("escalate")))
    for key in ("alertname", "summary"):
        if key in entry:
            rule = _with_text(where, rule, key, entry[key])
    return rule


def _with_text(where: str, rule: Rule, key: str, value: Any) -> Rule:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: `{key}` must be a non-empty string")
    try:  # a typo in a placeholder is found now, not at the first alert
        value.format(status_code="N000", origin="ORIGIN")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{where}: `{key}` may use only {{status_code}} and {{origin}} ({error!r})") from None
    changes: dict[str, Any] = {key: value}
    return dataclasses.replace(rule, **changes)


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValueError(f"{where}: `{key}` must be a string or a list of strings")
    return tuple(item.strip() for item in value)


def _enum(where: str, key: str, kind: type[enum.Enum], value: Any) -> Any:
    try:
        return kind(value.lower() if kind is Severity and isinstance(value, str) else value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ValueError(f"{where}: `{key}` {value!r} is not one of {choices}") from None


def _escalation(where: str, value: Any) -> Escalation | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"count", "window_seconds", "severity"}:
        raise ValueError(f"{where}: `escalate` takes `count`, `window_seconds` and `severity`")
    count, window = value.get("count"), value.get("window_seconds")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}: `escalate.count` must be a whole number of at least 1")
    if not isinstance(window, int | float) or isinstance(window, bool) or not window > 0:
        raise ValueError(f"{where}: `escalate.window_seconds` must be a positive number")
    return Escalation(count, float(window), _enum(where, "escalate.severity", Severity,
                                                   value.get("severity", "critical")))


def summary(rules: Iterable[Rule]) -> list[str]:
    """One line per rule, for ``--help``-style listings and the log at start-up."""
    lines = []
    for rule in rules:
        what = ", ".join(rule.codes) or ", ".join(outcome.value for outcome in rule.outcomes)
        if not rule.alert:
            lines.append(f"{what}: never alerts")
            continue
        line = f"{what}: {rule.severity.value} {rule.alertname}"
        if rule.escalate:
            line += (f", {rule.escalate.severity.value} at {rule.escalate.count} within "
                     f"{rule.escalate.window_seconds:g} s")
        lines.append(line)
    return lines
