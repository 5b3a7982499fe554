"""The wheel the container image installs holds every module, under the `passpost` namespace, and no development
tooling; installing it, or passpost-dev, editable (`make dev`) prints nothing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MAPPING = {"passpost": "passpost", "ingest": "passpost/ingest", "schemas": "passpost/schemas",
           "consumers": "passpost/consumers"}


def test_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--wheel-dir",
                            str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    # A newcomer's first install printed ~50 lines of setuptools deprecation warnings once.
    assert "deprecated" not in built.stdout + built.stderr
    assert "BuildBackendWarning" not in built.stdout + built.stderr
    [wheel] = tmp_path.glob("passpost-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{MAPPING[folder]}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder in MAPPING
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".avsc", ".xml"}
        if "__pycache__" not in path.parts
    }
    assert expected - names == set()
    # PEP 561: a consumer package (`passpost new consumer`) type-checks against passpost's annotations.
    assert "passpost/py.typed" in names
    assert not any(name.startswith(("ingest/", "schemas/", "consumers/")) for name in names)
    # The development tooling (devkit/, passpost-dev) stays out of the image.
    assert not any(name.startswith("passpost_dev") or "localkafka" in name for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "passpost = passpost.cli:main" in text
    assert "[passpost.consumers]" in text and "analytics" in text and "alerts" in text


@pytest.mark.parametrize("project", [".", "devkit"])
def test_an_editable_install_is_quiet(project: str, tmp_path: Path) -> None:
    """What `make dev` runs for passpost and passpost-dev says nothing unless something is wrong."""
    # --ignore-installed: the venv's own editable installs stay as they are.
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                "--no-deps", "--ignore-installed", "--prefix", str(tmp_path),
                                "--editable", str(ROOT / project)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout + installed.stderr == ""
