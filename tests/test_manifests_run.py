"""The rendered overlays, run: every Deployment's container from the image under test,
with the pod's security context, volumes, environment and probes (tests/kubelet.py says
how a pod becomes podman commands and why not ``podman kube play``).

dev         against the session's Kafka: the KafkaTopics as Strimzi would create them,
            the vendor's example posted to the ingress container lands in the analytics
            consumer's DuckDB file (read from its emptyDir after the pod stopped), an
            out-of-credits postback raises an alert at a webhook the test listens on.
production  against a broker of its own with a SASL_SSL listener and Kafka's authorizer on:
            each workload logs in as its own SCRAM-SHA-512 user with the password from "its"
            Secret, may do only what its KafkaUser's ACLs allow, and checks the broker
            against the CA mounted from the cluster CA Secret; the analytics
            store is PostgreSQL from Secret passpost-analytics-db, alerts go to Alertmanager
            and to the webhook from Secret passpost-alert-webhook.

In both, every Deployment runs; every container becomes ready on its readinessProbe; what
the kernel reports for its PID 1 matches the security context (uid, gid, fsGroup among its
groups, no capabilities, no_new_privs, a seccomp filter, a read-only root); and ``podman
stop`` (after ``preStop``) ends it with exit 0 within ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.kubelet import Cluster, Pod
from tests.live import free_port
from tests.podman_fixtures import podman

pytestmark = [pytest.mark.container, pytest.mark.kafka, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_text()
# The vendor's example as Skycore sends it when the account is out of credits: alerts by default.
OUT_OF_CREDITS = VENDOR_EXAMPLE.replace("<STATUSCODE>N801</STATUSCODE>", "<STATUSCODE>N811</STATUSCODE>").replace(
    "5294CE37878AE-112613-113711", "5294CE37878AE-112613-113712")
# Settings that pick a listening port, by the containerPort they configure.
PORT_SETTINGS = {8000: "PASSPOST_PORT", 9100: "PASSPOST_CONSUMER_PORT"}


def render(overlay: str) -> list[dict[str, Any]]:
    from tests.test_deploy import kubectl

    result = subprocess.run([kubectl(), "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True,
                            timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def deployments(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workloads that run pods: Deployments, and StatefulSets (production's ingress)."""
    return {r["metadata"]["name"]: r for r in resources if r["kind"] in ("Deployment", "StatefulSet")}


def create_kafka_topics(bootstrap: str, resources: list[dict[str, Any]], **security: Any) -> list[str]:
    """The KafkaTopics as Strimzi's Topic Operator would create them, on a one-broker cluster
    (replicas and min.insync.replicas 1)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topics = [r for r in resources if r["kind"] == "KafkaTopic"]

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = []
            for topic in topics:
                name = topic["spec"].get("topicName", topic["metadata"]["name"])
                if name in existing:
                    continue
                config = {key: str(value) for key, value in topic["spec"].get("config", {}).items()}
                config["min.insync.replicas"] = "1"
                new.append(NewTopic(name, num_partitions=topic["spec"]["partitions"], replication_factor=1,
                                    topic_configs=config))
            if new:
                await admin.create_topics(new)
        finally:
            await admin.close()

    asyncio.run(create())
    return [t["metadata"]["name"] for t in topics]


class Webhook:
    """A small HTTP receiver: every POSTed JSON body, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/passpost"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        return [alert for body in self.bodies for alert in body.get("alerts", [])
                if all(alert.get("labels", {}).get(k) == v for k, v in labels.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.close()


def wait_for(condition: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {message}")
        time.sleep(0.25)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if (line.startswith(name) and line[len(name)] in " {"
                and all(f'{k}="{v}"' in line for k, v in labels.items())):
            return float(line.rsplit(" ", 1)[1])
    return None


class Run:
    """The overlay's Deployments as pods, started in order and stopped (and checked) at the end."""

    def __init__(self, cluster: Cluster, image: str, workdir: Path) -> None:
        self.cluster = cluster
        self.image = image
        self.workdir = workdir
        self.pods: dict[str, Pod] = {}

    def start(self, name: str, env: dict[str, str]) -> Pod:
        workload = deployments(self.cluster.resources)[name]
        port_map: dict[int, int] = {}
        overrides = dict(env)
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                host_port = free_port()
                port_map[port["containerPort"]] = host_port
                overrides[PORT_SETTINGS[port["containerPort"]]] = str(host_port)
        containers = [c["name"] for c in workload["spec"]["template"]["spec"]["containers"]]
        pod = Pod(self.cluster, workload, self.image, self.workdir, {c: overrides for c in containers}, port_map)
        self.pods[name] = pod
        return pod.start()

    def stop_all_gracefully(self) -> dict[str, tuple[int, float, float]]:
        """Each container's (exit code, seconds to stop, grace period)."""
        outcomes = {}
        for pod in self.pods.values():
            for container in pod.containers:
                code, took = container.stop()
                outcomes[container.name] = (code, took, container.grace_seconds)
        return outcomes

    def remove_all(self) -> None:
        for pod in self.pods.values():
            pod.remove()


def tag_image(image: str, resources: list[dict[str, Any]]) -> None:
    """The overlay's image name (kustomize's `images:`) resolves to the image under test."""
    names = {c["image"] for w in deployments(resources).values() for c in w["spec"]["template"]["spec"]["containers"]}
    for name in names:
        podman("tag", image, name)


@contextlib.contextmanager
def running(cluster: Cluster, image: str, workdir: Path) -> Iterator[Run]:
    run = Run(cluster, image, workdir)
    try:
        yield run
    finally:
        run.remove_all()


PROC_STATUS = """
import errno, json, os
status = dict(line.split(":", 1) for line in open("/proc/1/status").read().splitlines())
try:
    open("/opt/passpost/probe", "w")
    root = "writable"
except OSError as error:
    root = errno.errorcode[error.errno]
print(json.dumps({"uid": status["Uid"].split(), "gid": status["Gid"].split(), "groups": status["Groups"].split(),
                  "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
                  "root": root}))
"""


def check_security(run: Run) -> None:
    """What the kernel says about PID 1 of every container: the security context was applied."""
    for pod in run.pods.values():
        pod_security = pod.spec["securityContext"]
        for container in pod.containers:
            own = container.spec["securityContext"]
            seen = json.loads(podman("exec", container.name, "python", "-c", PROC_STATUS).stdout)
            uid = str(own.get("runAsUser", pod_security["runAsUser"]))
            gid = str(own.get("runAsGroup", pod_security["runAsGroup"]))
            assert set(seen["uid"]) == {uid} and set(seen["gid"]) == {gid}, (container.name, seen)
            assert str(pod_security["fsGroup"]) in seen["groups"], (container.name, seen)
            assert seen["cap_eff"] == seen["cap_bnd"] == "0000000000000000", (container.name, seen)
            assert seen["no_new_privs"] == "1" and seen["seccomp"] == "2", (container.name, seen)  # 2: filter
            assert seen["root"] == "EROFS", (container.name, seen)


def start_pipeline(run: Run, resources: list[dict[str, Any]], kafka: dict[str, str], alerts_env: dict[str, str],
                   token: str, bodies: tuple[bytes, ...]) -> tuple[Pod, Pod, Pod]:
    """Start the consumers then the ingress (``alerts_env`` for the alerts consumer), check that
    every Deployment runs locked down, and post ``bodies``: each answered 200. The three pods."""
    alerts = run.start("passpost-alerts", {**kafka, **alerts_env})
    analytics = run.start("passpost-analytics", kafka)
    ingress = run.start("passpost-ingress", kafka)
    assert set(run.pods) == set(deployments(resources)), "every Deployment runs"
    check_security(run)
    url = f"http://127.0.0.1:{ingress.containers[0].port(8000)}/postbacks/passes"
    for body in bodies:
        response = httpx.post(url, params={"token": token}, content=body, timeout=10)
        assert response.status_code == 200, response.text
    return alerts, analytics, ingress


def check_graceful(outcomes: dict[str, tuple[int, float, float]]) -> None:
    for name, (code, took, grace) in outcomes.items():
        assert code == 0, f"{name} exited {code}"
        assert took < grace, f"{name} took {took:.1f} s to stop, grace period {grace:.0f} s"


# --------------------------------------------------------------------------------------


def test_dev_overlay_runs_end_to_end(passpost_image: str, kafka_bootstrap: str, webhook: Webhook,
                                     tmp_path: Path) -> None:
    resources = render("dev")
    tag_image(passpost_image, resources)
    create_kafka_topics(kafka_bootstrap, resources)
    cluster = Cluster(resources)
    kafka = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    token = cluster.secret(next(r["metadata"]["name"] for r in resources if r["kind"] == "Secret"
                                and r["metadata"]["name"].startswith("passpost-ingest-tokens")))["tokens"]
    with running(cluster, passpost_image, tmp_path) as run:
        # The alert webhook is production's (from a Secret); dev's alerts go to the log
        # unless told otherwise, so the test tells it.
        alerts, analytics, ingress = start_pipeline(run, resources, kafka, {"PASSPOST_ALERT_WEBHOOK_URL": webhook.url},
                                                    token, (VENDOR_EXAMPLE, OUT_OF_CREDITS))

        def written(pod: Pod) -> float:
            text = httpx.get(f"http://127.0.0.1:{pod.containers[0].port(9100)}/metrics", timeout=5).text
            return metric(text, "passpost_consumer_events_total") or 0.0

        wait_for(lambda: written(analytics) >= 2, 60, "the analytics consumer writes both events")
        wait_for(lambda: webhook.alerts(alertname="PasspostOutOfCredits"), 60, "an alert at the webhook")
        (alert,) = webhook.alerts(alertname="PasspostOutOfCredits")
        assert alert["status"] == "firing", alert
        assert written(alerts) >= 2
        state_dir = alerts.volume_path("state")
        data_dir = analytics.volume_path("data")
        outcomes = run.stop_all_gracefully()
        check_graceful(outcomes)

        # After the pods stopped, before they are deleted: the alerts consumer's state and the
        # analytics store are on their emptyDirs.
        state = json.loads((state_dir / "alerts-state.json").read_text())
        assert state["state"]["offsets"], state
        import duckdb

        with duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True) as db:
            rows = db.execute("SELECT status_code, serial_number FROM pass_postbacks ORDER BY status_code").fetchall()
        assert rows == [("N801", "5294CE37878AE-112613-113711"), ("N811", "5294CE37878AE-112613-113712")], rows


def add_scram_users(kafka: Any, passwords: dict[str, str]) -> None:
    """SCRAM-SHA-512 credentials for more users, as Strimzi's User Operator would set them
    (Kafka's own ConfigCommand over the broker's PLAINTEXT listener)."""
    from passpost_dev.kafka import ensure_kafka_jars, java_executable

    classpath = f"{ensure_kafka_jars()}/*"
    processes = [
        subprocess.Popen([java_executable(), "-cp", classpath, "kafka.admin.ConfigCommand", "--bootstrap-server",
                          kafka.bootstrap_servers, "--alter", "--add-config",
                          f"SCRAM-SHA-512=[iterations=4096,password={password}]", "--entity-type", "users",
                          "--entity-name", user], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for user, password in passwords.items()]
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output


# Kafka's protocol codes (org.apache.kafka.common.acl / resource).
_RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactionalId": 5}
_PATTERN_TYPES = {"literal": 3, "prefix": 4}
_OPERATIONS = {"Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7, "Describe": 8, "ClusterAction": 9,
               "DescribeConfigs": 10, "AlterConfigs": 11, "IdempotentWrite": 12}
_ALLOW = 3


def create_acls(bootstrap: str, users: list[dict[str, Any]]) -> int:
    """The KafkaUsers' ACLs, as Strimzi's User Operator would set them (CreateAcls, as a super user)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    async def create() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        created = 0
        try:
            for user in users:
                principal = f"User:{user['metadata']['name']}"
                for acl in user["spec"]["authorization"]["acls"]:
                    resource = acl["resource"]
                    for operation in acl["operations"]:
                        response = await admin._send_request(CreateAclsRequest(
                            _RESOURCE_TYPES[resource["type"]], resource.get("name", "kafka-cluster"),
                            _PATTERN_TYPES[resource.get("patternType", "literal")], principal,
                            acl.get("host", "*"), _OPERATIONS[operation], _ALLOW))
                        errors = [e for e in response.creation_responses if e[0] != 0]
                        assert not errors, (principal, resource, operation, errors)
                        created += 1
        finally:
            await admin.close()
        return created

    return asyncio.run(create())


def produce_raw(bootstrap: str, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value)
        finally:
            await producer.stop()

    asyncio.run(send())


def assert_refused_to_write(kafka: Any, user: str, password: str, topic: str) -> None:
    """The broker enforces the ACLs: ``user`` may not write ``topic``."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError
    from aiokafka.helpers import create_ssl_context

    async def write() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers_for("SASL_SSL"), security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=user, sasl_plain_password=password,
            ssl_context=create_ssl_context(cafile=str(kafka.ca_file)), request_timeout_ms=10000)
        await producer.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(topic, b"not allowed")
        finally:
            await producer.stop()

    asyncio.run(write())


class AuthorizingKafka:
    """LocalKafka with Kafka's StandardAuthorizer on: SCRAM users get only their ACLs, while
    the PLAINTEXT listener (the test's own admin, the broker itself) is a super user."""

    @staticmethod
    def start(workdir: Path) -> Any:
        from passpost_dev.kafka import LocalKafka

        return LocalKafka(workdir, listeners=("SASL_SSL",), sasl_username="passpost-ingest",
                          sasl_password="ingest-password", extra_properties={
                              "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                              "super.users": "User:ANONYMOUS"})


@pytest.fixture
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with AuthorizingKafka.start(tmp_path_factory.mktemp("production-kafka")) as kafka:
        yield kafka


def test_production_overlay_runs_with_scram_postgres_and_alertmanager(
        passpost_image: str, secured_kafka: Any, postgres_dsn: str, alertmanager_url: str, webhook: Webhook,
        tmp_path: Path) -> None:
    import uuid

    from tests.alertmanager_fixtures import active_alerts
    from tests.postgres_fixtures import rows

    resources = render("production")
    tag_image(passpost_image, resources)
    create_kafka_topics(secured_kafka.bootstrap_servers, resources)
    passwords = {"passpost-ingest": "ingest-password", "passpost-analytics": uuid.uuid4().hex,
                 "passpost-alerts": uuid.uuid4().hex}
    add_scram_users(secured_kafka, {k: v for k, v in passwords.items() if k != "passpost-ingest"})
    # Only what the KafkaUsers allow: the manifests' least-privilege ACLs must be enough.
    assert create_acls(secured_kafka.bootstrap_servers, [r for r in resources if r["kind"] == "KafkaUser"]) >= 12
    assert_refused_to_write(secured_kafka, "passpost-alerts", passwords["passpost-alerts"], "pass-postbacks.v1")
    token = uuid.uuid4().hex
    # What the operator creates by hand (deploy/README.md step 4) and what Strimzi creates:
    # the users' Secrets and the cluster CA.
    cluster = Cluster(resources, secrets={
        "passpost-ingest-tokens": {"tokens": f"old-token,{token}"},
        "passpost-analytics-db": {"dsn": postgres_dsn},
        "passpost-alert-webhook": {"webhook-url": webhook.url},
        "my-cluster-cluster-ca-cert": {"ca.crt": secured_kafka.ca_file.read_text()},
        **{user: {"password": password} for user, password in passwords.items()},
    })
    # Cluster addresses, remapped to this machine's: the SASL_SSL listener, Alertmanager.
    kafka = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": secured_kafka.bootstrap_servers_for("SASL_SSL")}
    origin = f"TEST_{uuid.uuid4().hex[:8]}"
    out_of_credits = OUT_OF_CREDITS.replace("<ORIGIN>GENERATE_PASS</ORIGIN>", f"<ORIGIN>{origin}</ORIGIN>")
    claims = ["passpost-alerts-state", "spool-passpost-ingress-0"]
    podman("volume", "rm", "--force", *claims)
    try:
        with running(cluster, passpost_image, tmp_path) as run:
            alerts, _, ingress = start_pipeline(run, resources, kafka, {"PASSPOST_ALERTMANAGER_URL": alertmanager_url},
                                                token, (VENDOR_EXAMPLE, out_of_credits))

            def stored() -> list[tuple[object, ...]]:
                return rows(postgres_dsn, "SELECT status_code, origin FROM pass_postbacks ORDER BY status_code")

            wait_for(lambda: len(stored()) >= 2, 60, "both events in PostgreSQL")
            # The ingress runs with its spool on the StatefulSet's claim; Kafka took
            # everything, so it holds nothing.
            spool = httpx.get(f"http://127.0.0.1:{ingress.containers[0].port(8000)}/metrics", timeout=5).text
            assert metric(spool, "passpost_spool_capacity_bytes") == 1024**3
            assert metric(spool, "passpost_spool_events") == 0
            assert stored() == [("N801", "GENERATE_PASS"), ("N811", origin)]
            # A record no consumer can decode: each writes it to its own dead-letter topic,
            # which its ACLs allow (Write), as the broker's acknowledgement tells.
            produce_raw(secured_kafka.bootstrap_servers, "pass-postbacks.v1", b"not an event")
            for name, pod in run.pods.items():
                if name == "passpost-ingress":
                    continue
                port = pod.containers[0].port(9100)

                def dead_letters(port: int = port) -> float:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    return metric(text, "passpost_consumer_dead_letters_total", reason="undecodable") or 0.0

                wait_for(lambda: dead_letters() >= 1, 60, f"{name} keeps the undecodable record")
            wait_for(lambda: webhook.alerts(origin=origin), 60, "the alert at the webhook")
            wait_for(lambda: active_alerts(alertmanager_url, origin=origin), 60, "the alert in Alertmanager")
            (alert,) = active_alerts(alertmanager_url, origin=origin)
            assert alert["labels"]["alertname"] == "PasspostOutOfCredits"
            assert alerts.containers[0].running()
            # The dead-letter topics exist (the platform made them), so no consumer warns that it
            # could not create its own, though its ACLs forbid creating topics.
            for pod in run.pods.values():
                for container in pod.containers:
                    assert "could not be created" not in container.logs(), container.logs()[-3000:]
            check_graceful(run.stop_all_gracefully())
        # The claim outlives the pod: the state is there for the next one.
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", "passpost-alerts-state").stdout.strip()
        state = json.loads((Path(mountpoint) / "alerts-state.json").read_text())
        assert any(group["labels"].get("origin") == origin for group in state["state"]["grouper"]["groups"]), state
    finally:
        podman("volume", "rm", "--force", *claims, check=False)
