"""`passpost new consumer NAME` (passpost_dev/scaffold/): the package it writes works, as a new user would try it.

Written into a temporary directory, the package passes the project's ruff and mypy settings; its
Kustomize components render with each of passpost's overlays and pass the checks tests/test_deploy.py
holds passpost's own consumers to; installed into a fresh virtual environment beside passpost, its
own test passes against the session's broker and `passpost dev --consumer NAME` runs it (`passpost
consume NAME` in a child process) until a posted postback lands in its file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from passpost.cli import _run as run_cli
from passpost.cli import cli
from tests import test_deploy as deploy
from tests.live import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
NAME = "failures-to-csv"
MODULE = "failures_to_csv"


def new(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passpost", "new", "consumer", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package `passpost new consumer failures-to-csv` writes, in a directory of its own."""
    where = tmp_path_factory.mktemp("scaffold")
    result = new(NAME, cwd=where)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return where / NAME


# --------------------------------------------------------------------------------------
# What it writes


def test_the_package_registers_its_consumer_and_pins_passpost(package: Path) -> None:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    assert project["name"] == NAME
    assert project["entry-points"]["passpost.consumers"] == {NAME: f"{MODULE}:FailuresToCsv"}
    assert project["dependencies"] == [f"passpost=={metadata.version('passpost')}"]
    assert f"passpost-dev=={metadata.version('passpost-dev')}" in project["optional-dependencies"]["test"]
    consumer = (package / MODULE / "consumer.py").read_text()
    assert f'name = "{NAME}"' in consumer and "async def write(self, batch: Batch)" in consumer
    assert "ExactlyOnceConsumer" in consumer and "load_offsets" in consumer and "check_topic" in consumer
    assert "kafka_bootstrap" in (package / "tests" / "test_consumer.py").read_text()
    assert not [path for path in package.rglob("*") if "{{" in path.name or path.suffix == ".tmpl"]
    assert not [path for path in package.rglob("*") if path.is_file() and "{{" in path.read_text()]


def test_the_command_says_where_it_wrote_and_what_next(tmp_path: Path) -> None:
    result = new("ok-one", "--dir", "somewhere/else", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "somewhere/else" in result.stdout and "pytest" in result.stdout
    assert (tmp_path / "somewhere" / "else" / "ok_one" / "consumer.py").is_file()


@pytest.mark.parametrize(("argv", "says"), [
    (["Bad_Name"], "lower-case letters"),
    (["9lives"], "lower-case letters"),
    (["two--hyphens"], "lower-case letters"),
    (["-x"], None),  # click takes it for an option: still one line, status 2
    (["x" * 60], "at most"),
    (["analytics"], "already registered"),
    (["alerts"], "already registered"),
    (["class"], "keyword"),
    (["json"], "would hide"),
    (["yaml"], "would hide"),
    (["fine-name", "--dir", "taken"], "already exists"),
])
def test_a_bad_name_is_one_line_status_2_and_nothing_written(tmp_path: Path, argv: list[str], says: str | None) -> None:
    (tmp_path / "taken").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = new(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("passpost: error: ")
    assert says is None or says in line, line
    assert sorted(tmp_path.rglob("*")) == before


def test_without_passpost_dev_the_command_says_in_one_line_how_to_get_it(tmp_path: Path) -> None:
    script = ("import sys\nsys.modules['passpost_dev'] = None  # as if passpost-dev were not installed\n"
              "from passpost.cli import main\nmain(['new', 'consumer', 'fine-name'])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("passpost: error: `passpost new` needs the development package passpost-dev")
    assert not list(tmp_path.iterdir())


def test_passpost_dev_refuses_a_consumer_nobody_registered_before_starting_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(cli.main, ["dev", "--consumer", "no-such-consumer"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "no consumer named 'no-such-consumer'" in line and "analytics" in line


def test_the_generated_files_pass_the_projects_ruff_and_mypy_settings(package: Path) -> None:
    ours, theirs = (tomllib.loads(path.read_text())["tool"] for path in (ROOT / "pyproject.toml",
                                                                       package / "pyproject.toml"))
    # The same rules and strictness (the import sections differ by design: there passpost is third-party).
    assert theirs["ruff"]["line-length"] == ours["ruff"]["line-length"]
    assert theirs["ruff"]["lint"]["select"] == ours["ruff"]["lint"]["select"]
    assert theirs["mypy"]["strict"] is ours["mypy"]["strict"] is True
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=package,
                          capture_output=True, text=True, timeout=60, check=False)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = subprocess.run([sys.executable, str(ROOT / ".ci" / "typecheck"), "--", MODULE, "tests"], cwd=package,
                          capture_output=True, text=True, timeout=300, check=False)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_the_dockerfile_passes_hadolint(package: Path) -> None:
    result = subprocess.run([deploy.hadolint(), "--no-color", str(package / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------
# Its Kustomize components, in each of passpost's overlays


def rendered_with_component(package: Path, overlay: str, into: Path) -> list[dict[str, Any]]:
    """A copy of deploy/ whose overlay lists the package's component, as deploy/README.md tells a user to do."""
    shutil.copytree(deploy.DEPLOY, into / "deploy")
    directory = into / "deploy" / "k8s" / "overlays" / overlay
    component = package / "k8s" / ("production" if overlay == "production" else "consumer")
    with (directory / "kustomization.yaml").open("a") as file:
        file.write(f"\ncomponents:\n  - {os.path.relpath(component, directory)}\n")
    return deploy._kustomize(directory)


@pytest.mark.parametrize("overlay", deploy.OVERLAYS)
def test_the_component_renders_with_each_overlay_and_validates_strictly(
        package: Path, overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = rendered_with_component(package, overlay, tmp_path)
    mine = deploy.named(resources, "Deployment", f"passpost-{NAME}")
    monkeypatch.setattr(deploy, "CONSUMERS", (*deploy.CONSUMERS, NAME))
    # Everything passpost's own manifests are held to, with this consumer among them.
    deploy.test_overlay_renders_into_one_namespace(overlay, resources)
    deploy.test_builtin_resources_pass_kubernetes_validate_strict(overlay, resources, tmp_path)
    deploy.test_custom_resources_match_their_crd_field_schemas(resources)
    deploy.test_every_container_is_locked_down(resources)
    deploy.test_every_workload_has_its_own_service_account_without_a_token(resources)
    deploy.test_commands_are_the_apps(resources)
    deploy.test_probes_point_at_the_health_endpoints(resources)
    deploy.test_consumers_use_the_apps_group_ids(resources)
    deploy.test_every_passpost_variable_is_a_setting_with_a_valid_value(resources)
    deploy.test_every_configmap_and_secret_a_pod_uses_exists(overlay, resources)
    deploy.test_topics_fit_the_app(overlay, resources)
    deploy.test_every_consumer_has_a_writable_store(resources)
    deploy.test_network_policies_deny_by_default_then_allow_what_is_served(resources)
    deploy.test_pods_run_as_the_images_user(resources)
    # Its own image (passpost's with the package added), tagged.
    (container,) = deploy.pod_spec(mine)["containers"]
    assert container["image"] == f"passpost-{NAME}:0.1.0"
    assert container["args"] == ["consume", NAME]
    if overlay == "production":
        monkeypatch.setattr(deploy, "SCALED", (*deploy.SCALED, NAME))
        deploy.test_kafka_users_have_least_privilege(resources)
        deploy.test_each_workload_authenticates_as_its_own_kafka_user(resources)
        deploy.test_scaled_objects_follow_the_consumers(resources)
        deploy.test_autoscalers_do_not_fight(resources)
        deploy.test_every_production_workload_has_a_disruption_budget(resources)
        deploy.test_pod_monitor_scrapes_every_pod(resources)
    else:  # like the rest of the dev overlay: plaintext, no Kafka users, no KEDA
        assert not deploy.of_kind(resources, "KafkaUser") and not deploy.of_kind(resources, "ScaledObject")
        assert deploy.named(resources, "KafkaTopic", f"pass-postbacks.dlq.{NAME}.v1")["spec"]["replicas"] == 1


# --------------------------------------------------------------------------------------
# Installed beside passpost, against the real broker


@pytest.fixture(scope="module")
def venv(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment that sees this one's packages (passpost, passpost-dev, pytest: none is
    downloaded) and has the generated package installed from its directory, as a user would install it. Its
    build backend (setuptools, in pip's isolated build environment) comes from pip's cache: this venv's
    setuptools is too old to build a wheel without the `wheel` package."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    purelib = Path(subprocess.run([where / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # `venv --system-site-packages` would give the base interpreter's packages, not this venv's; a .pth line
    # starting with `import` runs, and addsitedir also reads the .pth files there (the editable installs).
    (purelib / "passpost-beside.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(where / "bin" / "python"), "install", "--quiet",
         f"{package}[test]"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return where


@pytest.mark.kafka
def test_the_packages_own_test_passes_against_the_broker(venv: Path, package: Path, kafka_bootstrap: str) -> None:
    env = {**os.environ, "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}  # the session's: no second broker
    result = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=package,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


@pytest.fixture
def dev(venv: Path, kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    suffix = uuid.uuid4().hex[:8]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PASSPOST_")}
    env.update(PASSPOST_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, PASSPOST_PORT=str(free_port()),
               PASSPOST_EVENTS_TOPIC=f"scaffold-events-{suffix}", PASSPOST_DEAD_LETTER_TOPIC=f"scaffold-dlq-{suffix}")
    log = tmp_path / "dev.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([venv / "bin" / "python", "-m", "passpost", "dev", "--consumer", NAME],
                                   cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    try:
        yield process, log
    finally:
        stop(process, signal.SIGINT, timeout=60)


@pytest.mark.kafka
def test_passpost_dev_runs_the_consumer_and_a_posted_postback_reaches_it(
        dev: tuple[subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    process, log = dev
    deadline = time.monotonic() + 180

    def wait_for(condition: Any) -> Any:
        while not (found := condition()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        return found

    wait_for(lambda: "Ctrl-C stops everything" in log.read_text() and "Application startup complete" in log.read_text())
    output = log.read_text()
    assert f"{NAME} (metrics on http://" in output
    curl = output[output.index("curl -sS"): output.index("\nXML\n") + len("\nXML")]
    # The printed curl, with a failure (the consumer writes failures): `passpost consume NAME` gets it.
    posted = subprocess.run(["bash", "-c", curl.replace("<STATUSCODE>N801<", "<STATUSCODE>N811<")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert posted.returncode == 0, posted.stderr
    (event_id,) = json.loads(posted.stdout)["event_ids"]
    written = tmp_path / "data" / f"{NAME}.csv"
    rows = wait_for(lambda: written.is_file() and written.read_text().splitlines())
    assert [row.split(",")[0] for row in rows] == [event_id]
    assert re.fullmatch(rf"{event_id},[^,]*,N811", rows[0])


def test_the_passpost_dev_wheel_carries_every_template(tmp_path: Path) -> None:
    """devkit/pyproject.toml lists the template's folders one by one: a new one must be listed too."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(ROOT / "devkit")], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("passpost_dev-*.whl")
    template = ROOT / "devkit" / "passpost_dev" / "scaffold" / "template"
    expected = {f"passpost_dev/scaffold/template/{path.relative_to(template).as_posix()}"
                for path in template.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert expected - set(zipfile.ZipFile(wheel).namelist()) == set()
