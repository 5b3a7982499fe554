"""The session's schema registry: one Apicurio Registry 3 for every test that needs one (a JVM
start costs seconds on this machine). Tests use their own topics, hence their own subjects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.ecosystem import Missing, apicurio, unavailable


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Confluent-compatible URL (``.../apis/ccompat/v7``) of a running Apicurio Registry."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(apicurio(tmp_path_factory.mktemp("apicurio")))
        except Missing as missing:
            unavailable(str(missing))  # skips, or fails under CI=true
            raise
        yield url
