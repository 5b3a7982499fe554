"""The lakehouse component (deploy/k8s/components/lakehouse) in the production overlay, held to what
tests/test_deploy.py holds the overlays to: rendered offline, validated strictly, locked down, every
variable a setting with a valid value, credentials only from Secrets, KEDA up to the partition count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import test_deploy as deploy

COMPONENT = deploy.K8S / "components" / "lakehouse" / "production"


@pytest.fixture(scope="module")
def with_lakehouse(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # What deploy/README.md tells to add to the production overlay, in an overlay of it (the namespace and image
    # names as the production overlay gives them to its own resources).
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "kafka",
        "images": [{"name": "passpost-lakehouse", "newName": "registry.example.com/passpost-lakehouse",
                    "newTag": "0.1.0"}],
        "resources": [os.path.relpath(deploy.K8S / "overlays" / "production", overlay)],
        "components": [os.path.relpath(COMPONENT, overlay)],
    }))
    return deploy._kustomize(overlay)


def lakehouse(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return deploy.named(resources, "Deployment", "passpost-lakehouse")


def test_the_component_validates_like_the_overlays(with_lakehouse: list[dict[str, Any]], tmp_path: Path) -> None:
    deploy.test_overlay_renders_into_one_namespace("production", with_lakehouse)
    deploy.test_builtin_resources_pass_kubernetes_validate_strict("production", with_lakehouse, tmp_path)
    deploy.test_custom_resources_match_their_crd_field_schemas(with_lakehouse)
    deploy.test_every_container_is_locked_down(with_lakehouse)
    deploy.test_every_workload_has_its_own_service_account_without_a_token(with_lakehouse)
    # The maintenance CronJob serves nothing: only the Deployments have probes.
    deploy.test_probes_point_at_the_health_endpoints(deploy.of_kind(with_lakehouse, "Deployment"))


def test_every_variable_is_a_setting_with_a_valid_value_and_credentials_are_secrets(
        with_lakehouse: list[dict[str, Any]]) -> None:
    declared = {setting.env: setting for setting in deploy.settings_module.SETTINGS}
    consumer = deploy.pod_spec(lakehouse(with_lakehouse))["containers"][0]
    maintain = deploy.pod_spec(deploy.named(with_lakehouse, "CronJob", "passpost-lakehouse-maintain"))["containers"][0]
    assert consumer["args"] == ["consume", "lakehouse"] and maintain["args"] == ["lakehouse", "maintain"]
    for container in (consumer, maintain):
        env = deploy.container_env(with_lakehouse, container)
        for name, value in env.items():
            if name.startswith("AWS_"):
                assert value["secretKeyRef"]["optional"] is True, name  # none with vended credentials
                continue
            if name.startswith("OTEL_"):  # the production overlay's tracing reaches this component too
                assert name in deploy.OTEL_VARIABLES, name
                continue
            assert name in declared or name in deploy.DECIDED_SETTINGS, name
            if name in declared and isinstance(value, str) and not name.endswith("_FILE"):  # files: in the pod
                declared[name].parse(value)
        assert env["PASSPOST_ICEBERG_WAREHOUSE"].startswith("s3://")
        for secret in ("PASSPOST_ICEBERG_CATALOG_URI", "AWS_SECRET_ACCESS_KEY"):
            assert env[secret]["secretKeyRef"]["name"], secret  # never a literal value
    env = deploy.container_env(with_lakehouse, consumer)
    for secret in ("PASSPOST_ANALYTICS_HASH_KEY", "PASSPOST_KAFKA_SASL_PASSWORD"):
        assert env[secret]["secretKeyRef"]["name"], secret
    readme = (deploy.DEPLOY / "README.md").read_text()
    assert "create secret generic passpost-lakehouse " in readme


def test_keda_scales_it_on_its_lag_up_to_the_partition_count(with_lakehouse: list[dict[str, Any]]) -> None:
    scaled = deploy.named(with_lakehouse, "ScaledObject", "passpost-lakehouse")
    topic = deploy.named(with_lakehouse, "KafkaTopic", "pass-postbacks.v1")
    assert scaled["spec"]["maxReplicaCount"] == topic["spec"]["partitions"]
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "passpost-lakehouse"
    keda = deploy.named(with_lakehouse, "KafkaUser", "passpost-keda")
    assert {"type": "group", "name": "passpost-lakehouse", "patternType": "literal"} in [
        acl["resource"] for acl in keda["spec"]["authorization"]["acls"]]
