"""deploy/Dockerfile, built with podman (tests/podman_fixtures.py) and looked into.

The image's size is printed in the test output (``passpost image ...: N MB``). Running it
as Kubernetes does is tests/test_manifests_run.py's job.
"""

from __future__ import annotations

import pytest

from tests.podman_fixtures import podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

# 362 MB before the runtime stage lost pip, setuptools, C sources, debug symbols and apt; a
# regression guard well above today's size, not a target.
MAX_IMAGE_MB = 260


def run_in(image: str, *command: str, check: bool = True) -> str:
    """``command`` in the image as the manifests run it: uid 10001, read-only root, no capabilities."""
    result = podman("run", "--rm", "--network", "host", "--pull", "never", "--read-only", "--read-only-tmpfs=false",
                    "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "--entrypoint", command[0], image, *command[1:], check=check)
    return result.stdout + result.stderr


def test_image_is_small(passpost_image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", passpost_image).stdout.strip())
    assert size < MAX_IMAGE_MB * 1_000_000, f"{size / 1e6:.0f} MB"


def test_runtime_has_no_installer_and_no_build_tools(passpost_image: str) -> None:
    script = """
import importlib.util, pathlib, shutil, sys
for module in ("pip", "setuptools", "wheel"):
    assert importlib.util.find_spec(module) is None, module
for tool in ("pip", "pip3", "gcc", "cc", "make", "strip", "ld"):
    assert shutil.which(tool) is None, tool
venv = pathlib.Path(sys.prefix)
assert venv == pathlib.Path("/opt/passpost"), venv
assert not [p for p in venv.rglob("*") if p.suffix in {".c", ".pyx", ".pxd", ".h"}]
assert not list(pathlib.Path("/usr/share/python-wheels").glob("*"))
assert not pathlib.Path("/etc/pip.conf").exists(), "the build's pip configuration stays out of the image"
print("lean")
"""
    assert "lean" in run_in(passpost_image, "python", "-c", script)


def test_entrypoint_is_passpost_under_the_manifests_constraints(passpost_image: str) -> None:
    output = podman("run", "--rm", "--network", "host", "--pull", "never", "--read-only", "--read-only-tmpfs=false",
                    "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    passpost_image, "--version").stdout
    assert output.startswith("passpost"), output
    # Its own code is compiled ahead: nothing would be written on a read-only root.
    listing = run_in(passpost_image, "python", "-c",
                     "import passpost, pathlib; p = pathlib.Path(passpost.__file__).parent;"
                     "print(sorted(x.name for x in p.glob('__pycache__/*.pyc'))[:3])")
    assert ".pyc" in listing, listing
    identity = run_in(passpost_image, "id")
    assert "uid=10001" in identity and "gid=10001" in identity, identity


def test_every_compiled_module_finds_its_libraries(passpost_image: str) -> None:
    # A base without a library a wheel links against (DuckDB needs libstdc++) fails only
    # when that module is imported: ask the dynamic loader about every shared object.
    script = (
        "import pathlib, subprocess, sys\n"
        "missing = []\n"
        "for so in pathlib.Path(sys.prefix).rglob('*.so*'):\n"
        "    out = subprocess.run(['ldd', str(so)], capture_output=True, text=True).stdout\n"
        "    missing += [f'{so}: {line.strip()}' for line in out.splitlines() if 'not found' in line]\n"
        "print('\\n'.join(missing) or 'all found')\n"
    )
    assert run_in(passpost_image, "python", "-c", script).strip() == "all found"
    imports = "import duckdb, lxml.etree, fastavro, uvloop, httptools, psycopg, cramjam, yaml, aiokafka; print('imported')"
    assert "imported" in run_in(passpost_image, "python", "-c", imports)
