"""deploy/compose.yaml, run with Debian's podman-compose: the one-shot ``topics``, the ingress
and both consumers from the image under test, with the file's own user, read-only root,
tmpfs, capabilities, security options, volumes, environment, commands and healthchecks.

What is swapped, and why: the ``kafka`` (apache/kafka) and ``postgres`` services pull from
Docker Hub, which these machines cannot reach, so a broker and a PostgreSQL of the test's
own stand in for them; podman's bridge networking does not run here (CONTAINERS.md), so
every service gets the host's network, their addresses point at the stand-ins and each
listening port (and the healthcheck that probes it) moves to a free one. ``build`` gives
way to the image the session built (same Dockerfile; the build needs the proxy's CA).
Everything else is the file as shipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from passpost_dev.kafka import LocalKafka
from tests.live import free_port
from tests.podman_fixtures import podman, podman_env
from tests.test_manifests_run import OUT_OF_CREDITS, VENDOR_EXAMPLE, Webhook, wait_for

pytestmark = [pytest.mark.container, pytest.mark.kafka, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
PROJECT = "passpost-compose-test"
STAND_INS = {"kafka", "postgres"}  # Docker Hub images: the test's own servers instead
PORT_SETTINGS = {"PASSPOST_PORT": "8000", "PASSPOST_CONSUMER_PORT": "9100"}


def podman_compose() -> str:
    # PyPI's (the test extra), next to the interpreter: Debian bookworm's 1.0.3 puts a
    # network_mode: host service on the project network too (podman refuses) and mangles
    # exec-form healthchecks.
    beside = Path(sys.executable).parent / "podman-compose"
    found = str(beside) if beside.is_file() else shutil.which("podman-compose")
    if found is None:
        message = "podman-compose is not installed (pip install podman-compose)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found  # type: ignore[return-value]


def for_this_machine(bootstrap: str, dsn: str) -> tuple[dict[str, Any], dict[str, int]]:
    """deploy/compose.yaml with the stand-ins and host networking; returns it and each service's port."""
    document = yaml.safe_load(COMPOSE.read_text())  # anchors and merge keys resolved
    services = document["services"]
    for name in STAND_INS:
        del services[name]
    ports: dict[str, int] = {}
    for name, service in services.items():
        assert service.pop("build") == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["image"] == "passpost:local"
        service["network_mode"] = "host"
        service.pop("ports", None)
        depends = {k: v for k, v in service.get("depends_on", {}).items() if k not in STAND_INS}
        if depends:
            service["depends_on"] = depends
        else:
            service.pop("depends_on", None)
        env = service["environment"]
        env["PASSPOST_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        if "PASSPOST_ANALYTICS_DSN" in env:
            env["PASSPOST_ANALYTICS_DSN"] = dsn
        for setting, default in PORT_SETTINGS.items():
            if setting in env:
                assert str(env[setting]) == default, (name, env[setting])
                ports[name] = free_port()
                env[setting] = ports[name]
                health = service.get("healthcheck", {}).get("test")
                if health:
                    service["healthcheck"]["test"] = [part.replace(f":{default}/", f":{ports[name]}/") for part in health]
    for name in ("kafka-data", "postgres-data"):
        document["volumes"].pop(name, None)
    return document, ports


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


@pytest.fixture
def compose_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    # A broker of its own: the compose file's topic and group names are fixed.
    with LocalKafka(tmp_path / "kafka") as kafka:
        yield kafka


def test_compose_runs_end_to_end_with_podman(passpost_image: str, compose_kafka: LocalKafka, postgres_dsn: str,
                                             tmp_path: Path) -> None:
    from tests.postgres_fixtures import rows

    tool = podman_compose()
    document, ports = for_this_machine(compose_kafka.bootstrap_servers, postgres_dsn)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    podman("tag", passpost_image, "passpost:local")
    webhook = Webhook()
    token = "compose-token"
    # As the README says: the token and an alert sink from the shell.
    env = {**podman_env(), "PASSPOST_INGEST_TOKENS": token, "PASSPOST_ALERT_WEBHOOK_URL": webhook.url}

    def compose(*args: str, timeout: float = 300) -> str:
        result = subprocess.run([tool, "-p", PROJECT, "-f", str(path), *args], env=env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"podman-compose {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        return result.stdout + result.stderr

    def logs(service: str) -> str:
        result = podman("logs", container(service), check=False)
        return result.stdout + result.stderr

    compose("down", "-v")
    try:
        compose("up", "-d", "--no-build")
        # The one-shot topics service creates the topics and exits 0.
        code = podman("wait", container("topics"), timeout=120).stdout.strip()
        assert code == "0", logs("topics")
        for service in ("ingress", "analytics", "alerts"):
            url = f"http://127.0.0.1:{ports[service]}/readyz"

            def ready(url: str = url) -> bool:
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                wait_for(ready, 90, f"{service} ready")
            except AssertionError as error:
                raise AssertionError(f"{error}\n{logs(service)}") from None
            # The compose file's own healthcheck, run by podman inside the container.
            check = podman("healthcheck", "run", container(service), check=False)
            assert check.returncode == 0, f"{service}: healthcheck {check.stdout}{check.stderr}"

        url = f"http://127.0.0.1:{ports['ingress']}/postbacks/passes"
        for body in (VENDOR_EXAMPLE, OUT_OF_CREDITS):
            response = httpx.post(url, params={"token": token}, content=body, timeout=10)
            assert response.status_code == 200, response.text

        def stored() -> list[tuple[object, ...]]:
            return rows(postgres_dsn, "SELECT status_code, serial_number FROM pass_postbacks ORDER BY status_code")

        wait_for(lambda: len(stored()) >= 2, 60, "both events in PostgreSQL")
        assert stored() == [("N801", "5294CE37878AE-112613-113711"), ("N811", "5294CE37878AE-112613-113712")]
        wait_for(lambda: webhook.alerts(alertname="PasspostOutOfCredits"), 60, "the alert at the webhook")

        started = time.monotonic()
        compose("stop", timeout=120)
        took = time.monotonic() - started
        for service in ("ingress", "analytics", "alerts"):
            code = podman("inspect", "--format", "{{.State.ExitCode}}", container(service)).stdout.strip()
            assert code == "0", f"{service} exited {code}:\n{logs(service)}"
        assert took < 60, f"stopping took {took:.0f} s"
        # The alerts consumer's state is on its named volume.
        volume = f"{PROJECT}_alerts-state"
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip()
        state = json.loads((Path(mountpoint) / "alerts-state.json").read_text())
        assert state["state"]["offsets"], state
    finally:
        webhook.close()
        subprocess.run([tool, "-p", PROJECT, "-f", str(path), "down", "-v"], env=env, capture_output=True,
                       timeout=300, check=False)
