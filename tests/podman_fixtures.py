"""The passpost image, built with podman from deploy/Dockerfile, for the tests that run it.

passpost_image  the image, built once per session (``localhost/passpost:test``); its size
                is printed in the test output.

Podman runs the way /work/shared/CONTAINERS.md describes these machines: its own
``containers.conf`` (runc, cgroupfs, file events, ulimits the host allows) and
``storage.conf``, and ``--network host`` everywhere. Both files and podman's storage live
in ``<cache>/podman`` (``$PASSPOST_CACHE_DIR`` or ``~/.cache/passpost``, as for Kafka's
jars), outside the clone: CI runs in a fresh clone each time, and a warm storage keeps
the base image and the build's layers between runs on one machine. A fresh machine
builds everything from scratch:

- the bases, ``localhost/passpost-{runtime,build}-base-python311:bookworm-<recipe>``:
  Docker Hub is out of reach, so Debian bookworm's Python 3.11 is bootstrapped with
  ``mmdebstrap`` from the machine's own apt sources and imported (under a minute each);
  ``<recipe>`` changes with the command, so a changed recipe builds a new base;
- the image: ``podman build --build-arg PYTHON_IMAGE=<runtime base> --build-arg
  BUILD_IMAGE=<build base>``. pip inside the build reaches
  PyPI only with the host's pip configuration and CA bundle, which are mounted for the
  build stage only (``--target build``); the runtime stage is then built without any
  mount (the build stage comes from the layer cache), so no trace of them is in the image.

Without podman (or mmdebstrap) these tests skip, except under ``CI`` where they fail:
.ci/run installs them, and a skip there would hide a broken install step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from passpost_dev.cache import cache_root

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/passpost:test"
PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_PIP_CONF = Path("/etc/pip.conf")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

CONTAINERS_CONF = """\
[containers]
# podman's default ulimits for root exceed this machine's hard limits
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""

# The bases: Debian's Python 3.11. Documentation, manual pages and translations are left
# out (dpkg path excludes, as Debian's own slim images do), apt's package lists are dropped
# after the bootstrap, and /usr is merged by mmdebstrap's hook rather than the usrmerge
# package, which would pull in the whole of Perl. The runtime's base is Debian's essential
# set plus Python (no apt: nothing installs packages at run time); the build stage's has
# apt (for binutils) and python3-venv.
_SLIM = (
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log',
)
MMDEBSTRAP_OPTIONS = {
    "runtime": ("--variant=essential", "--include=python3,python-is-python3,ca-certificates,passwd,libstdc++6", *_SLIM),
    "build": ("--variant=minbase", f"--include={','.join(PYTHON_PACKAGES)}", *_SLIM),
}
BASE_CHANGES = ('CMD ["python3"]', "ENV LANG=C.UTF-8")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)  # .ci/run installs it: a skip there would hide a broken install step
    pytest.skip(message)


def podman_home() -> Path:
    home = cache_root() / "podman"
    home.mkdir(parents=True, exist_ok=True)
    return home


def podman_env() -> dict[str, str]:
    """The environment podman runs in: its configuration files under the cache."""
    home = podman_home()
    conf, storage = home / "containers.conf", home / "storage.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    storage_text = (f'[storage]\ndriver = "overlay"\ngraphroot = "{home / "storage"}"\n'
                    f'runroot = "{home / "run"}"\n')
    if not storage.exists() or storage.read_text() != storage_text:
        storage.write_text(storage_text)
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def podman_binary() -> str:
    found = shutil.which("podman")
    if found is None:
        _missing("podman is not installed (apt-get install podman runc)")
    return found  # type: ignore[return-value]


def podman(*args: str, check: bool = True, timeout: float = 120, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with the test configuration; raise with its output when it fails."""
    result = subprocess.run([podman_binary(), *args], env=podman_env(), capture_output=True, text=True,
                            timeout=timeout, check=False, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed (exit {result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    with open(podman_home() / f".{name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def base_image(stage: str = "runtime") -> str:
    """A Debian bookworm Python 3.11 base ("runtime" or "build"), made with mmdebstrap the first time."""
    options = MMDEBSTRAP_OPTIONS[stage]
    recipe = hashlib.sha256(json.dumps([options, BASE_CHANGES]).encode()).hexdigest()[:12]
    name = f"localhost/passpost-{stage}-base-python311:bookworm-{recipe}"
    if image_exists(name):
        return name
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        _missing("mmdebstrap is not installed (apt-get install mmdebstrap): it makes the image's base")
    with _lock("base"):
        if image_exists(name):
            return name
        with tempfile.TemporaryDirectory(prefix="passpost-base-") as workdir:
            rootfs = Path(workdir) / "rootfs.tar"
            sources = [str(APT_SOURCES)] if APT_SOURCES.exists() else []
            started = time.monotonic()
            result = subprocess.run([mmdebstrap, *options, "--format=tar", "bookworm", str(rootfs), *sources],
                                    capture_output=True, text=True, timeout=1800, check=False)
            assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-4000:]}"
            changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
            podman("import", *changes, str(rootfs), name, timeout=600)
            print(f"base image {name} made in {time.monotonic() - started:.0f} s")
        # Bases of earlier recipes: no longer used, ~130 MB each.
        repository = name.rsplit(":", 1)[0]
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout.split()
        for old in set(listed) - {name}:
            podman("rmi", old, check=False)
    return name


def _snapshot(target: Path) -> Path:
    """The build context as it is now: what Dockerfile.dockerignore admits, and the Dockerfile."""
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    admitted = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for name in admitted:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    (target / "deploy").mkdir()
    for name in ("Dockerfile", "Dockerfile.dockerignore"):
        shutil.copy2(ROOT / "deploy" / name, target / "deploy" / name)
    return target


def build_image(tag: str = IMAGE, extras: str = "") -> str:
    """``podman build`` of deploy/Dockerfile on the Debian base, with the distribution's ``extras``
    (comma-separated, the Dockerfile's ``PASSPOST_EXTRAS``); returns ``tag``."""
    common = ["build", "--network", "host", "--ignorefile", "deploy/Dockerfile.dockerignore",
              *(["--build-arg", f"PASSPOST_EXTRAS={extras}"] if extras else []),
              "--build-arg", f"PYTHON_IMAGE={base_image('runtime')}",
              "--build-arg", f"BUILD_IMAGE={base_image('build')}", "-f", "deploy/Dockerfile"]
    mounts = [f"--volume={path}:{path}:ro" for path in (HOST_CA_BUNDLE, HOST_PIP_CONF) if path.exists()]
    with _lock("build"), tempfile.TemporaryDirectory(prefix="passpost-context-") as workdir:
        # Both passes build one snapshot of the sources: the second must find the first's
        # layers in the cache even while the working tree changes.
        context = str(_snapshot(Path(workdir)))
        # The build stage with pip's configuration (it downloads), then the whole image
        # without it: the build stage's layers come from the cache, the runtime stage gets
        # no mount points left behind.
        podman(*common, *mounts, "--target", "build", "-t", f"{tag}-build", context, timeout=3000)
        podman(*common, "-t", tag, context, timeout=600)
        podman("image", "prune", "--force", check=False)  # dangling images of earlier builds
    return tag


def image_size(name: str) -> int:
    """The image's size in bytes as ``podman images`` reports it (uncompressed layers)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


@pytest.fixture(scope="session")
def passpost_image(request: pytest.FixtureRequest) -> str:
    return _built(request, IMAGE, "")


LAKEHOUSE_IMAGE = "localhost/passpost-lakehouse:test"


@pytest.fixture(scope="session")
def passpost_lakehouse_image(request: pytest.FixtureRequest) -> str:
    """The image with ``passpost[lakehouse]`` (``--build-arg PASSPOST_EXTRAS=lakehouse``)."""
    return _built(request, LAKEHOUSE_IMAGE, "lakehouse")


def _built(request: pytest.FixtureRequest, tag: str, extras: str) -> str:
    started = time.monotonic()
    name = build_image(tag, extras)
    size = image_size(name)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"passpost image {name}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s"
    if reporter is not None:
        reporter.write_line(line)
    print(line)
    return name
