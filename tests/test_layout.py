"""bench/ and tests/ import each other's helpers by package name (run from the repository root), never by
editing sys.path; helpers both need live once, in the development package (devkit/, ``passpost_dev``)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_no_sys_path_edits_in_bench_or_tests() -> None:
    this = Path(__file__).resolve()
    edits = [str(path.relative_to(ROOT)) for path in _sources("bench", "tests")
             if path.resolve() != this and re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", path.read_text())]
    assert edits == []


@pytest.mark.parametrize("module", ["bench.ingest", "bench.consume", "bench.alerts", "bench.bare_app"])
def test_each_benchmark_imports_as_a_module_of_the_bench_package(module: str) -> None:
    assert callable(getattr(importlib.import_module(module), "main", None)) or module == "bench.bare_app"


EVERY_FOLDER = ("passpost", "ingest", "schemas", "consumers", "devkit", "bench", "tests")


def test_one_free_port_helper() -> None:
    defined = [str(path.relative_to(ROOT)) for path in _sources(*EVERY_FOLDER)
               if re.search(r"^def _?free_port\(", path.read_text(), re.MULTILINE)]
    assert defined == ["devkit/passpost_dev/ports.py"]


def test_one_way_to_stop_a_child_process() -> None:
    """Signal, wait, and kill on a timeout: ``passpost_dev.processes.stop`` (or ``stop_all``), written once."""
    this = Path(__file__).resolve()
    copies = [str(path.relative_to(ROOT)) for path in _sources(*EVERY_FOLDER) if path.resolve() != this
              if re.search(r"TimeoutExpired:\s*\n\s*[\w.]+\.kill\(\)", path.read_text())]
    assert copies == ["devkit/passpost_dev/processes.py"]


def test_the_runtime_package_holds_no_development_tooling() -> None:
    """The wheel the image installs is built from these folders; the broker launcher and ``passpost dev`` live in
    devkit/ (the passpost-dev distribution), which only ``passpost dev`` imports, lazily."""
    runtime = _sources("passpost", "ingest", "schemas", "consumers")
    importers = sorted(str(path.relative_to(ROOT)) for path in runtime
                       if re.search(r"^\s*(from|import) passpost_dev\b", path.read_text(), re.MULTILINE))
    assert importers == ["passpost/cli.py"]
    assert not {"localkafka.py", "ports.py", "processes.py", "dev.py"} & {path.name for path in _sources("passpost")}
