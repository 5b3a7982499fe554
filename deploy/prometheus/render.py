"""Write the production overlay's SLO PrometheusRule from the plain rules file beside this script.

    python deploy/prometheus/render.py            # regenerate after editing slo.rules.yaml
    python deploy/prometheus/render.py --check    # exit 1 when the PrometheusRule is stale

One source, two forms: Prometheus without the operator loads ``slo.rules.yaml`` as it is
(``rule_files:``); Prometheus Operator gets the same groups in a PrometheusRule. The
groups are copied as parsed YAML, so the two cannot differ in anything but formatting.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "slo.rules.yaml"
TARGET = HERE.parent / "k8s" / "overlays" / "production" / "slo-prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/slo.rules.yaml by deploy/prometheus/render.py: edit that
# file (its comments explain the SLO and where to change the objective), then run
#     python deploy/prometheus/render.py
# Like the PodMonitor, the `release` label must match your Prometheus's ruleSelector.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions stay readable blocks (``|``), as in the source."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "passpost-slo", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != rendered:
            print(f"{TARGET} is stale: run python deploy/prometheus/render.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
