"""Run a rendered Deployment's (or StatefulSet's) pod with podman the way a kubelet would, for tests.

Why a translator rather than ``podman kube play``: kube play takes the manifests' word for
some things and ignores others a kubelet enforces (``runAsNonRoot`` against the image's
user, a missing non-optional Secret, an emptyDir's ``sizeLimit``, ``preStop`` within the
grace period), it needs every Secret and ConfigMap fed to it as YAML, and it puts the
containers of a pod behind an infra container with its own network namespace, where
``--network host`` and per-container ports are awkward. Here every field of the pod spec
the manifests use is mapped explicitly, and a field it does not know fails the test
instead of being dropped, so a manifest change cannot silently escape the run.

What is mapped, per container:

- image (``--pull never``: the overlay's image name is tagged onto the image under test),
  ``command`` (entrypoint) and ``args``, ``workingDir``;
- environment as the kubelet builds it: ``envFrom`` ConfigMaps and Secrets in order,
  then ``env`` (values, ``configMapKeyRef``, ``secretKeyRef``; optional ones may be
  missing, others stop the pod like CreateContainerConfigError); ``$(VAR)`` references
  are refused (unused here);
- volumes at their mount paths: ``emptyDir`` as a tmpfs of its ``sizeLimit`` mounted on
  the host for the pod's life (it outlives the container, as on a node, so a test can
  read it after the container stopped), ``persistentVolumeClaim`` as a podman volume
  named after the claim, a StatefulSet's ``volumeClaimTemplates`` as the podman volume of
  the claim the controller would make for replica 0 (``<template>-<statefulset>-0``, kept
  after the pod, like a claim), ``secret`` and ``configMap`` as read-only files with their
  ``items`` and ``defaultMode``;
- security: ``runAsUser``/``runAsGroup`` (container over pod), ``fsGroup`` as a
  supplementary group, ``runAsNonRoot`` checked against the effective uid (the kubelet
  refuses to start the container), ``readOnlyRootFilesystem`` as ``--read-only`` without
  podman's extra tmpfs mounts (so a missing writable path shows), ``capabilities``,
  ``allowPrivilegeEscalation: false`` as ``no-new-privileges``, ``privileged``, seccomp
  ``RuntimeDefault`` (podman's default profile);
- ``resources.limits`` as ``--memory`` and ``--cpus``;
- probes: ``startupProbe`` then ``readinessProbe`` (HTTP GET) until they pass within
  their budget; ``preStop`` (sleep, httpGet) then ``podman stop --time`` with what is
  left of ``terminationGracePeriodSeconds``.

What differs, on purpose: every container shares the host's network (podman's
``--network host``, as CONTAINERS.md prescribes here), so a port the manifests fix
(8000, 9100) is remapped to a free port through ``port_map`` together with the setting
that picks it, and addresses of cluster services (the Kafka bootstrap, Alertmanager) are
overridden by the test through ``env_overrides``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.podman_fixtures import podman

_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_DECIMAL = {"k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory/storage quantity ("64Mi", "1Gi", "500M", "1024") in bytes."""
    text = str(quantity)
    for suffix, factor in {**_BINARY, **_DECIMAL}.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def quantity_cpus(quantity: str | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


class PodSpecError(AssertionError):
    """The pod could not start as the kubelet would refuse it (or a field is unknown here)."""


# Fields of a pod or container the translator either maps or knows to be irrelevant on
# one machine (scheduling, the service account, service links, probes it runs itself).
_POD_FIELDS = {
    "containers", "volumes", "securityContext", "terminationGracePeriodSeconds", "serviceAccountName",
    "automountServiceAccountToken", "enableServiceLinks", "topologySpreadConstraints", "affinity",
    "nodeSelector", "tolerations", "priorityClassName",
}
_CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "env", "envFrom", "ports",
    "volumeMounts", "securityContext", "resources", "startupProbe", "livenessProbe", "readinessProbe",
    "lifecycle",
}


@dataclass
class Cluster:
    """What the API server would hold: the rendered resources and Secrets made outside them."""

    resources: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # created by hand or by operators

    def config_map(self, name: str) -> dict[str, str] | None:
        for resource in self.resources:
            if resource["kind"] == "ConfigMap" and resource["metadata"]["name"] == name:
                return dict(resource.get("data", {}))
        return None

    def secret(self, name: str) -> dict[str, str] | None:
        for resource in self.resources:
            if resource["kind"] == "Secret" and resource["metadata"]["name"] == name:
                data = {key: base64.b64decode(value).decode() for key, value in resource.get("data", {}).items()}
                data.update(resource.get("stringData", {}))
                return data
        return self.secrets.get(name)


@dataclass
class Container:
    pod: Pod
    spec: dict[str, Any]
    name: str
    log: Path

    @property
    def grace_seconds(self) -> float:
        return float(self.pod.spec.get("terminationGracePeriodSeconds", 30))

    def probe_url(self, probe: str) -> str | None:
        http = self.spec.get(probe, {}).get("httpGet")
        if http is None:
            return None
        port = http["port"]
        if isinstance(port, str):
            port = {p["name"]: p["containerPort"] for p in self.spec.get("ports", [])}[port]
        port = self.pod.port_map.get(port, port)
        return f"http://127.0.0.1:{port}{http.get('path', '/')}"

    def port(self, container_port: int) -> int:
        return self.pod.port_map.get(container_port, container_port)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return state == "true"

    def wait_probe(self, probe: str, timeout: float | None = None) -> float:
        """Poll the probe until it answers 200; returns the seconds it took."""
        url = self.probe_url(probe)
        if url is None:
            return 0.0
        settings = self.spec[probe]
        budget = timeout if timeout is not None else (
            settings.get("initialDelaySeconds", 0) + settings.get("periodSeconds", 10) * settings.get("failureThreshold", 3))
        started = time.monotonic()
        last = ""
        while True:
            try:
                response = httpx.get(url, timeout=settings.get("timeoutSeconds", 1))
                if response.status_code == 200:
                    return time.monotonic() - started
                last = f"{response.status_code} {response.text.strip()}"
            except httpx.HTTPError as error:
                last = repr(error)
            if not self.running():
                raise PodSpecError(f"{self.name} exited before its {probe} passed:\n{self.logs()[-6000:]}")
            if time.monotonic() - started > budget:
                raise PodSpecError(f"{self.name}: {probe} {url} did not pass within {budget:.0f} s "
                                   f"(last: {last}):\n{self.logs()[-6000:]}")
            time.sleep(0.2)

    def stop(self) -> tuple[int, float]:
        """preStop, then SIGTERM with the rest of the grace period; (exit code, seconds taken)."""
        started = time.monotonic()
        pre_stop = self.spec.get("lifecycle", {}).get("preStop")
        if pre_stop:
            if "sleep" in pre_stop:
                time.sleep(pre_stop["sleep"]["seconds"])
            elif "httpGet" in pre_stop:
                http = pre_stop["httpGet"]
                httpx.get(f"http://127.0.0.1:{self.port(http['port'])}{http.get('path', '/')}", timeout=5)
            else:
                raise PodSpecError(f"preStop {sorted(pre_stop)} is not mapped")
        remaining = max(1, int(self.grace_seconds - (time.monotonic() - started)))
        podman("stop", "--time", str(remaining), self.name, timeout=remaining + 30)
        took = time.monotonic() - started
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())
        return code, took


@dataclass
class Pod:
    """One replica of a Deployment or StatefulSet, run with podman; ``start()`` returns once it is ready."""

    cluster: Cluster
    workload: dict[str, Any]
    image: str
    workdir: Path
    env_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # by container name
    port_map: dict[int, int] = field(default_factory=dict)  # containerPort -> host port
    containers: list[Container] = field(default_factory=list)
    _tmpfs: list[Path] = field(default_factory=list)
    _volumes: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (podman -v source, is_dir)

    @property
    def name(self) -> str:
        return self.workload["metadata"]["name"]

    @property
    def hostname(self) -> str:
        """A StatefulSet's pod is named (and hostnamed) after its ordinal."""
        return f"{self.name}-0" if self.workload["kind"] == "StatefulSet" else self.name

    @property
    def spec(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    # -- the spec, translated ------------------------------------------------------------

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref, data = source["configMapRef"], self.cluster.config_map(source["configMapRef"]["name"])
            else:
                ref, data = source["secretRef"], self.cluster.secret(source["secretRef"]["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodSpecError(f"{self.name}: envFrom {ref['name']} does not exist")
            env.update({prefix + key: value for key, value in data.items()})
        for variable in container.get("env", []):
            name = variable["name"]
            if "value" in variable:
                value = str(variable["value"])
                if "$(" in value:
                    raise PodSpecError(f"{self.name}: $(VAR) references in {name} are not mapped")
                env[name] = value
                continue
            source = variable["valueFrom"]
            if "secretKeyRef" in source:
                ref, data = source["secretKeyRef"], self.cluster.secret(source["secretKeyRef"]["name"])
            elif "configMapKeyRef" in source:
                ref, data = source["configMapKeyRef"], self.cluster.config_map(source["configMapKeyRef"]["name"])
            else:
                raise PodSpecError(f"{self.name}: {name} from {sorted(source)} is not mapped")
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise PodSpecError(f"{self.name}: {name}: {ref['name']}/{ref['key']} does not exist "
                                   "(CreateContainerConfigError)")
            env[name] = data[ref["key"]]
        return env

    def _prepare_volumes(self) -> None:
        root = self.workdir / self.name / "volumes"
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            path = root / name
            if "emptyDir" in volume:
                path.mkdir(parents=True)
                size = volume["emptyDir"].get("sizeLimit")
                if os.geteuid() == 0:
                    options = "mode=0777" + (f",size={quantity_bytes(size)}" if size else "")
                    subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"emptydir-{name}", str(path)], check=True)
                    self._tmpfs.append(path)
                else:
                    path.chmod(0o777)
                self._volumes[name] = (str(path), True)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if podman("volume", "exists", claim, check=False).returncode != 0:
                    podman("volume", "create", claim)
                self._volumes[name] = (claim, True)
            elif "secret" in volume or "configMap" in volume:
                kind = "secret" if "secret" in volume else "configMap"
                source = volume[kind]
                ref = source.get("secretName") or source.get("name")
                data = self.cluster.secret(ref) if kind == "secret" else self.cluster.config_map(ref)
                if data is None:
                    if source.get("optional"):
                        continue
                    raise PodSpecError(f"{self.name}: volume {name}: {kind} {ref} does not exist")
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                mode = source.get("defaultMode", 0o644)
                path.mkdir(parents=True)
                for item in items:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", mode))
                self._volumes[name] = (str(path), True)
            else:
                raise PodSpecError(f"{self.name}: volume {name} of kind {sorted(set(volume) - {'name'})} is not mapped")
        for template in self.claim_templates():
            name = template["metadata"]["name"]
            if name in self._volumes:
                raise PodSpecError(f"{self.name}: volumeClaimTemplate {name} shadows a pod volume")
            claim = self.claim_name(name)
            if podman("volume", "exists", claim, check=False).returncode != 0:
                podman("volume", "create", claim)
            self._volumes[name] = (claim, True)

    def claim_templates(self) -> list[dict[str, Any]]:
        """A StatefulSet's volumeClaimTemplates, checked: fields a podman volume cannot honour fail."""
        templates: list[dict[str, Any]] = self.workload["spec"].get("volumeClaimTemplates", [])
        for template in templates:
            unknown = set(template.get("spec", {})) - {"accessModes", "resources", "storageClassName"}
            if unknown or set(template) - {"metadata", "spec"}:
                raise PodSpecError(f"{self.name}: volumeClaimTemplate fields {sorted(unknown)} are not mapped")
            if template["spec"].get("accessModes") != ["ReadWriteOnce"]:
                raise PodSpecError(f"{self.name}: only ReadWriteOnce claim templates are mapped (one replica)")
        return templates

    def claim_name(self, template: str) -> str:
        """The claim the StatefulSet controller makes for replica 0."""
        return f"{template}-{self.name}-0"

    def _security(self, container: dict[str, Any]) -> list[str]:
        pod = self.spec.get("securityContext", {})
        own = container.get("securityContext", {})
        merged = {**pod, **own}
        args: list[str] = []
        uid = merged.get("runAsUser")
        gid = merged.get("runAsGroup")
        if uid is None:
            user = podman("image", "inspect", "--format", "{{.Config.User}}", self.image).stdout.strip()
            uid_text = user.split(":")[0]
            if merged.get("runAsNonRoot") and not uid_text.isdigit():
                raise PodSpecError(f"{self.name}: runAsNonRoot with a non-numeric image user {user!r}")
            uid = int(uid_text) if uid_text.isdigit() else 0
        if merged.get("runAsNonRoot") and uid == 0:
            raise PodSpecError(f"{self.name}: container has runAsNonRoot and would run as root")
        args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if pod.get("fsGroup") is not None:
            args += ["--group-add", str(pod["fsGroup"])]
        for supplemental in pod.get("supplementalGroups", []):
            args += ["--group-add", str(supplemental)]
        if own.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        capabilities = own.get("capabilities", {})
        for capability in capabilities.get("drop", []):
            args += ["--cap-drop", capability]
        for capability in capabilities.get("add", []):
            args += ["--cap-add", capability]
        if own.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if own.get("privileged"):
            args += ["--privileged"]
        seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise PodSpecError(f"{self.name}: seccomp profile {seccomp} is not mapped")
        unknown = set(own) - {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "capabilities",
                              "allowPrivilegeEscalation", "privileged", "seccompProfile"}
        if unknown:
            raise PodSpecError(f"{self.name}: securityContext fields {sorted(unknown)} are not mapped")
        return args

    def run_args(self, container: dict[str, Any], name: str) -> list[str]:
        unknown = set(container) - _CONTAINER_FIELDS
        if unknown:
            raise PodSpecError(f"{self.name}/{container['name']}: fields {sorted(unknown)} are not mapped")
        args = ["run", "--detach", "--name", name, "--hostname", self.hostname, "--network", "host", "--pull", "never"]
        args += self._security(container)
        env = {**self._env(container), **self.env_overrides.get(container["name"], {})}
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for mount in container.get("volumeMounts", []):
            if mount.get("subPath"):
                raise PodSpecError(f"{self.name}: subPath mounts are not mapped")
            if mount["name"] not in self._volumes:
                raise PodSpecError(f"{self.name}: volume {mount['name']} is not declared (or is an absent optional)")
            source, _ = self._volumes[mount["name"]]
            options = "ro" if mount.get("readOnly") else "rw"
            if not source.startswith("/"):  # a podman volume for a claim: owned by the pod's user
                options += ",U"
            args += ["--volume", f"{source}:{mount['mountPath']}:{options}"]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", str(quantity_cpus(limits["cpu"]))]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        if container.get("command"):
            args += ["--entrypoint", json.dumps(container["command"])]
        return [*args, self.image, *container.get("args", [])]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Pod:
        unknown = set(self.spec) - _POD_FIELDS
        if unknown:
            raise PodSpecError(f"{self.name}: pod fields {sorted(unknown)} are not mapped")
        if self.spec.get("initContainers"):
            raise PodSpecError(f"{self.name}: init containers are not mapped")
        self._prepare_volumes()
        for spec in self.spec["containers"]:
            name = f"{self.name}-{spec['name']}"
            podman("rm", "--force", "--ignore", name)
            container = Container(self, spec, name, self.workdir / f"{name}.log")
            podman(*self.run_args(spec, name))
            self.containers.append(container)
        for container in self.containers:
            container.wait_probe("startupProbe")
            container.wait_probe("readinessProbe", timeout=60)
        return self

    def volume_path(self, name: str) -> Path:
        source, _ = self._volumes[name]
        return Path(source)

    def remove(self) -> None:
        """Pod deletion: containers removed (their logs kept next to the volumes), emptyDirs gone."""
        for container in self.containers:
            container.log.write_text(container.logs())
            podman("rm", "--force", "--ignore", container.name, check=False)
        for path in self._tmpfs:
            subprocess.run(["umount", str(path)], check=False)
        self._tmpfs.clear()
        shutil.rmtree(self.workdir / self.name / "volumes", ignore_errors=True)

