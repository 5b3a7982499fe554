"""The production overlay's PrometheusRule, evaluated by Prometheus's own ``promtool``
(Debian package ``prometheus``): the rules parse (templates included), and fed with series
like the consumers export, each alert fires when it should and stays quiet when it should not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import of_kind, render


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install --no-install-recommends prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def rule_groups() -> list[dict[str, Any]]:
    (rule,) = [r for r in of_kind(render("production"), "PrometheusRule") if r["metadata"]["name"] == "passpost"]
    return rule["spec"]["groups"]


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "passpost.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout, result.stdout


POD = 'namespace="kafka",pod="passpost-alerts-7d9c",consumer="alerts"'
LAG = POD + ',topic="pass-postbacks.v1",partition="0"'
LABELS = {"namespace": "kafka", "pod": "passpost-alerts-7d9c", "consumer": "alerts"}

UNIT_TESTS = [
    # Sink refuses: nothing committed for minutes while 5 records wait -> stalled, after `for`.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_consumer_seconds_since_commit{{{POD}}}", "values": "0+60x15"},
         {"series": f"passpost_consumer_lag{{{LAG}}}", "values": "5x15"},
         {"series": f"passpost_consumer_ready{{{POD}}}", "values": "1 1 0x13"},
     ],
     "alert_rule_test": [
         {"eval_time": "4m", "alertname": "PasspostConsumerStalled", "exp_alerts": []},
         {"eval_time": "6m", "alertname": "PasspostConsumerStalled",
          "exp_alerts": [{"exp_labels": {**LABELS, "severity": "critical"}}]},
         {"eval_time": "6m", "alertname": "PasspostConsumerNotReady", "exp_alerts": []},
         {"eval_time": "8m", "alertname": "PasspostConsumerNotReady",
          "exp_alerts": [{"exp_labels": {**LABELS, "severity": "warning"}}]},
     ]},
    # Idle: no commit for a long time, but nothing waits -> quiet.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_consumer_seconds_since_commit{{{POD}}}", "values": "0+60x30"},
         {"series": f"passpost_consumer_lag{{{LAG}}}", "values": "0x30"},
         {"series": f"passpost_consumer_ready{{{POD}}}", "values": "1x30"},
     ],
     "alert_rule_test": [
         {"eval_time": "30m", "alertname": name, "exp_alerts": []}
         for name in ("PasspostConsumerStalled", "PasspostConsumerNotReady", "PasspostConsumerLagGrowing")
     ]},
    # Lag growing by 100 a minute while batches still commit -> falling behind, not stalled.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_consumer_seconds_since_commit{{{POD}}}", "values": "1x40"},
         {"series": f"passpost_consumer_lag{{{LAG}}}", "values": "0+100x40"},
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": "PasspostConsumerLagGrowing", "exp_alerts": []},
         {"eval_time": "30m", "alertname": "PasspostConsumerLagGrowing",
          "exp_alerts": [{"exp_labels": {"namespace": "kafka", "consumer": "alerts", "severity": "warning"}}]},
         {"eval_time": "30m", "alertname": "PasspostConsumerStalled", "exp_alerts": []},
     ]},
    # A large but shrinking lag (catching up after an outage) -> quiet.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_consumer_seconds_since_commit{{{POD}}}", "values": "1x40"},
         {"series": f"passpost_consumer_lag{{{LAG}}}", "values": "50000-100x40"},
     ],
     "alert_rule_test": [
         {"eval_time": "40m", "alertname": "PasspostConsumerLagGrowing", "exp_alerts": []},
     ]},
]


INGRESS = 'namespace="kafka",pod="passpost-ingress-0"'
INGRESS_LABELS = {"namespace": "kafka", "pod": "passpost-ingress-0"}
CONSUMER = 'namespace="kafka",pod="passpost-analytics-0"'
CONSUMER_LABELS = {"namespace": "kafka", "pod": "passpost-analytics-0"}
SPOOL_ALERTS = ("PasspostSpoolGrowing", "PasspostSpoolAging", "PasspostSpoolFilling", "PasspostSpoolCorruptRecords")

SPOOL_TESTS = [
    # Kafka away: the spool grows by 1200 records a minute and ages -> growing, then aging;
    # at 40 % of its capacity it is not yet filling.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_spool_events{{{INGRESS}}}", "values": "0 0+1200x40"},
         {"series": f"passpost_spool_oldest_event_age_seconds{{{INGRESS}}}", "values": "0 0+60x40"},
         {"series": f"passpost_spool_bytes{{{INGRESS}}}", "values": "0+10000000x40"},
         {"series": f"passpost_spool_capacity_bytes{{{INGRESS}}}", "values": "1000000000x40"},
         {"series": f"passpost_spool_corrupt_records_total{{{INGRESS},kind=\"checksum\"}}", "values": "0x40"},
     ],
     "alert_rule_test": [
         {"eval_time": "8m", "alertname": "PasspostSpoolGrowing", "exp_alerts": []},
         {"eval_time": "14m", "alertname": "PasspostSpoolGrowing",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "severity": "warning"}}]},
         {"eval_time": "18m", "alertname": "PasspostSpoolAging", "exp_alerts": []},
         {"eval_time": "22m", "alertname": "PasspostSpoolAging",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "severity": "warning"}}]},
         {"eval_time": "40m", "alertname": "PasspostSpoolFilling", "exp_alerts": []},
         {"eval_time": "40m", "alertname": "PasspostSpoolCorruptRecords", "exp_alerts": []},
     ]},
    # Past half its capacity -> filling (critical).
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_spool_bytes{{{INGRESS}}}", "values": "600000000x20"},
         {"series": f"passpost_spool_capacity_bytes{{{INGRESS}}}", "values": "1000000000x20"},
     ],
     "alert_rule_test": [
         {"eval_time": "3m", "alertname": "PasspostSpoolFilling", "exp_alerts": []},
         {"eval_time": "10m", "alertname": "PasspostSpoolFilling",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "severity": "critical"}}]},
     ]},
    # Draining after an outage: large, old, but shrinking and under half full -> only the age
    # speaks while it is old; an empty spool is quiet.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_spool_events{{{INGRESS}}}", "values": "50000-2000x25 0x20"},
         {"series": f"passpost_spool_oldest_event_age_seconds{{{INGRESS}}}", "values": "100x25 0x20"},
         {"series": f"passpost_spool_bytes{{{INGRESS}}}", "values": "50000000-2000000x25 0x20"},
         {"series": f"passpost_spool_capacity_bytes{{{INGRESS}}}", "values": "1000000000x45"},
     ],
     "alert_rule_test": [
         {"eval_time": "20m", "alertname": name, "exp_alerts": []} for name in SPOOL_ALERTS
     ] + [{"eval_time": "45m", "alertname": name, "exp_alerts": []} for name in SPOOL_ALERTS]},
    # A corrupt record quarantined -> a warning for the hour after.
    {"interval": "1m",
     "input_series": [
         {"series": f"passpost_spool_corrupt_records_total{{{INGRESS},kind=\"checksum\"}}", "values": "0 0 1x80"},
     ],
     "alert_rule_test": [
         {"eval_time": "1m", "alertname": "PasspostSpoolCorruptRecords", "exp_alerts": []},
         {"eval_time": "10m", "alertname": "PasspostSpoolCorruptRecords",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "severity": "warning"}}]},
         {"eval_time": "80m", "alertname": "PasspostSpoolCorruptRecords", "exp_alerts": []},
     ]},
]


BROKER_TESTS = [
    # Broker 2 dies for good: unreachable from the ingress for 2 minutes -> a warning naming it;
    # broker 1 dies and is back (or fenced and replaced) within a minute -> quiet.
    {"interval": "30s",
     "input_series": [
         {"series": f'passpost_kafka_broker_reachable{{{INGRESS},node="2"}}', "values": "1 1 0x12"},
         {"series": f'passpost_kafka_broker_reachable{{{INGRESS},node="1"}}', "values": "1 0 0 1x11"},
         {"series": f'passpost_kafka_broker_reachable{{{CONSUMER},consumer="analytics",node="2"}}',
          "values": "1 1 1 1 0x10"},
     ],
     "alert_rule_test": [
         {"eval_time": "2m", "alertname": "PasspostKafkaBrokerUnreachable", "exp_alerts": []},
         {"eval_time": "3m30s", "alertname": "PasspostKafkaBrokerUnreachable",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "node": "2", "severity": "warning"}}]},
         # The consumer lost it a minute later: its alert, naming the consumer, comes a minute later too.
         {"eval_time": "4m30s", "alertname": "PasspostKafkaBrokerUnreachable",
          "exp_alerts": [{"exp_labels": {**INGRESS_LABELS, "node": "2", "severity": "warning"}},
                         {"exp_labels": {**CONSUMER_LABELS, "consumer": "analytics", "node": "2",
                                         "severity": "warning"}}]},
     ]},
]


def test_rules_fire_when_a_consumer_stalls_or_falls_behind_and_only_then(tmp_path: Path) -> None:
    # promtool compares annotations too; their templates are checked above, so the
    # behaviour is tested on the rules without them.
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": UNIT_TESTS + SPOOL_TESTS + BROKER_TESTS}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
