"""bench/ and tests/ import each other's helpers by package name (run from the repository root), never by
editing sys.path; helpers both need live once, in passpost."""

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


def test_one_free_port_helper() -> None:
    defined = [str(path.relative_to(ROOT)) for path in _sources("passpost", "ingest", "schemas", "consumers", "bench",
                                                                "tests")
               if re.search(r"^def _?free_port\(", path.read_text(), re.MULTILINE)]
    assert defined == ["passpost/ports.py"]
