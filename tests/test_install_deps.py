"""`.ci/install-deps`, which `make test` and `.ci/run` share: without root (or apt-get) it does not try
to install, it says in one line what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / ".ci" / "install-deps"


def test_without_apt_get_it_names_every_missing_package_in_one_line(tmp_path: Path) -> None:
    # A PATH with a shell and Python but no Java, Maven, Alertmanager, podman or apt-get.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "ls", "python3"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = subprocess.run([str(bin_dir / "bash"), str(SCRIPT)], check=False, env={**os.environ, "PATH": str(bin_dir)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("passpost: the tests need packages that are not installed: ")
    for package in ("openjdk-17-jre-headless", "maven", "prometheus-alertmanager", "podman"):
        assert package in line


def test_make_test_and_ci_run_both_use_it() -> None:
    assert ".ci/install-deps" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "system-deps:\n\t.ci/install-deps" in makefile and "test: system-deps" in makefile
