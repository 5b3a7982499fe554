"""The schema check without a registry (schemas/evolution.py) and the registry settings' one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from passpost.schemas import evolution


def test_the_current_schema_is_kept_and_compatible_with_every_kept_version() -> None:
    versions = evolution.history()
    assert [v.name for v in versions][:1] == ["pass_postback.v1.avsc"]
    assert evolution.kept() and evolution.problems() == []


def _changed(change: Any) -> dict[str, Any]:
    schema = evolution.current()
    change(schema)
    return schema


@pytest.mark.parametrize(("change", "direction"), [
    # A field without a default: new readers cannot read old events.
    (lambda s: s["fields"].append({"name": "channel", "type": "string"}), "backward"),
    # A field removed that old readers need (no default there): old readers cannot read new events.
    (lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != "origin"]), "forward"),
    # A type narrowed: a string no longer accepted where old events have one.
    (lambda s: next(f for f in s["fields"] if f["name"] == "code").__setitem__("type", "null"), "backward"),
])
def test_incompatible_changes_are_found_in_the_direction_they_break(change: Any, direction: str) -> None:
    found = evolution.problems(_changed(change))
    assert found and all(f"({direction})" in line for line in found), found
    assert not evolution.kept(_changed(change))


def test_compatible_changes_pass_both_ways() -> None:
    optional = {"name": "channel", "type": ["null", "string"], "default": None}
    assert evolution.problems(_changed(lambda s: s["fields"].append(optional))) == []
    # Removing a field that has a default: old readers fill it in.
    assert evolution.problems(_changed(lambda s: s.__setitem__(
        "fields", [f for f in s["fields"] if f["name"] != "extra"]))) == []


def passpost(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PASSPOST_")}
    return subprocess.run([sys.executable, "-m", "passpost", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("env", "named"), [
    ({"PASSPOST_SCHEMA_REGISTRY_URL": "apicurio:8080"}, "PASSPOST_SCHEMA_REGISTRY_URL"),
    ({"PASSPOST_SCHEMA_REGISTRY_URL": "http://r:8081", "PASSPOST_SCHEMA_REGISTRY_USERNAME": "u"},
     "PASSPOST_SCHEMA_REGISTRY_PASSWORD"),
    ({"PASSPOST_SCHEMA_REGISTRY_CA_FILE": "/nonexistent/ca.pem"}, "PASSPOST_SCHEMA_REGISTRY_CA_FILE"),
    ({"PASSPOST_SCHEMA_REGISTRY_AUTO_REGISTER": "maybe"}, "PASSPOST_SCHEMA_REGISTRY_AUTO_REGISTER"),
])
def test_a_bad_registry_setting_is_one_line_exit_2(env: dict[str, str], named: str) -> None:
    result = passpost("schema", "check", **env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"passpost: error: {named}:"), line


def test_schema_register_without_a_registry_is_one_line_exit_2() -> None:
    result = passpost("schema", "register")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "passpost: error: PASSPOST_SCHEMA_REGISTRY_URL: not set; `passpost schema register` needs the registry"]
