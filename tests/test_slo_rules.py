"""The pass-generation SLO rules (deploy/prometheus/slo.rules.yaml and the production
overlay's PrometheusRule generated from it), checked and unit-tested with ``promtool``.

Each test feeds series shaped like the ingress's ``passpost_events_produced_total`` and
says which burn-rate alert fires when: a burst pages within minutes, a slow leak opens a
ticket and never pages, failures within the budget fire nothing, a single failure in a
quiet night fires nothing, and recovery resolves.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.test_deploy import of_kind, render
from tests.test_prometheus_rules import promtool

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "prometheus" / "slo.rules.yaml"
ALERT = "PasspostPassGenerationBudgetBurn"
ORIGIN = {"namespace": "kafka", "origin": "GENERATE_PASS"}


def source_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(SOURCE.read_text())["groups"]


def series(outcome: str, values: str) -> dict[str, str]:
    labels = f'namespace="kafka",origin="GENERATE_PASS",outcome="{outcome}",pod="passpost-ingress-1"'
    return {"series": f"passpost_events_produced_total{{{labels}}}", "values": values}


def firing(severity: str) -> list[dict[str, Any]]:
    return [{"exp_labels": {**ORIGIN, "severity": severity}}]


def test_the_prometheus_rule_is_generated_from_the_plain_rules_file() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "prometheus" / "render.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    (rule,) = [r for r in of_kind(render("production"), "PrometheusRule") if r["metadata"]["name"] == "passpost-slo"]
    assert rule["spec"]["groups"] == source_groups()


def test_the_objective_is_one_value_in_one_place() -> None:
    rules = "\n".join(line for line in SOURCE.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert rules.count("vector(0.99)") == 1 and "0.99" not in rules.replace("vector(0.99)", "")
    assert "0.01" not in rules and "0.1" not in rules, "the budget is derived from the objective, not written out"


def test_both_forms_pass_promtool_check(tmp_path: Path) -> None:
    (rule,) = [r for r in of_kind(render("production"), "PrometheusRule") if r["metadata"]["name"] == "passpost-slo"]
    rendered = tmp_path / "from-prometheusrule.yml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    for path in (SOURCE, rendered):
        result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0 and "SUCCESS: 13 rules found" in result.stdout, result.stdout + result.stderr


UNIT_TESTS = [
    # A healthy hour (1 postback/s, all N801), then half of them fail: pages within minutes
    # (the slower windows open a ticket too; Alertmanager's inhibit rules hide it under the page).
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+60x120"), series("FAILURE", "0x60 0+60x60")],
     "alert_rule_test": [
         {"eval_time": "60m", "alertname": ALERT, "exp_alerts": []},
         {"eval_time": "70m", "alertname": ALERT, "exp_alerts": firing("critical")},
         {"eval_time": "80m", "alertname": ALERT, "exp_alerts": firing("critical") + firing("warning")},
     ]},
    # The same burst for half an hour, then the failures stop: the page resolves once the
    # short windows are clean, the ticket once the 6 h window is.
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+60x500"), series("FAILURE", "0x60 0+60x30 1800x410")],
     "alert_rule_test": [
         {"eval_time": "85m", "alertname": ALERT, "exp_alerts": firing("critical") + firing("warning")},
         {"eval_time": "150m", "alertname": ALERT, "exp_alerts": firing("warning")},
         {"eval_time": "470m", "alertname": ALERT, "exp_alerts": []},
     ]},
    # A slow leak at 3x the budget (3 % failures) for a day: a ticket, never a page.
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+97x1440"), series("FAILURE", "0+3x1440")],
     "alert_rule_test": [
         {"eval_time": "10m", "alertname": ALERT, "exp_alerts": []},
         {"eval_time": "1h", "alertname": ALERT, "exp_alerts": firing("warning")},
         {"eval_time": "23h", "alertname": ALERT, "exp_alerts": firing("warning")},
     ]},
    # A steady 0.5 % of failures is within a 99 % objective: nothing fires, all day.
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+199x1440"), series("FAILURE", "0+1x1440")],
     "alert_rule_test": [
         {"eval_time": eval_time, "alertname": ALERT, "exp_alerts": []} for eval_time in ("1h", "6h", "12h", "23h")
     ]},
    # A quiet night: 3 postbacks an hour, and one of them fails. 25 % over the hour would
    # burn the budget at 25x, but 4 postbacks are below the guard: nothing fires.
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+0.05x360"), series("FAILURE", "0x200 1x160")],
     "alert_rule_test": [
         {"eval_time": eval_time, "alertname": ALERT, "exp_alerts": []} for eval_time in ("203m", "210m", "260m")
     ]},
    # UNKNOWN codes are neither good nor bad: a flood of them next to healthy traffic fires nothing.
    {"interval": "1m",
     "input_series": [series("SUCCESS", "0+60x120"), series("FAILURE", "0x120"), series("UNKNOWN", "0+600x120")],
     "alert_rule_test": [{"eval_time": "100m", "alertname": ALERT, "exp_alerts": []}]},
]


def test_burn_rate_alerts_fire_for_bursts_and_leaks_and_only_then(tmp_path: Path) -> None:
    # promtool compares annotations too; their templates are checked by `check rules` above.
    groups = copy.deepcopy(source_groups())
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_recorded_ratio_counts_unknown_as_neither(tmp_path: Path) -> None:
    groups = copy.deepcopy(source_groups())
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    test = {"interval": "1m",
            "input_series": [series("SUCCESS", "0+30x60"), series("FAILURE", "0+10x60"), series("UNKNOWN", "0+60x60")],
            "promql_expr_test": [
                {"expr": "passpost:pass_generation_failures:ratio_rate30m", "eval_time": "60m",
                 "exp_samples": [{"labels": 'passpost:pass_generation_failures:ratio_rate30m{namespace="kafka",'
                                            'origin="GENERATE_PASS"}', "value": 0.25}]},
                {"expr": "passpost:pass_generation_events:per_hour", "eval_time": "60m",
                 "exp_samples": [{"labels": 'passpost:pass_generation_events:per_hour{namespace="kafka",'
                                            'origin="GENERATE_PASS"}', "value": 2400}]},
            ]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [test]}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_slo_row_reads_recorded_series_that_exist() -> None:
    import json
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "passpost.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in re.findall(r"\bpasspost:[a-z_:0-9]+", target["expr"])}
    recorded = {rule["record"] for group in source_groups() for rule in group["rules"] if "record" in rule}
    assert used and used <= recorded, used - recorded
