"""A real Jaeger for the tracing tests (passpost_dev.jaeger: built once with Go, cached).

jaeger  one Jaeger for the session, in-memory, receiving OTLP on free loopback ports; tests
        ask its query API for the traces they made (each test makes traces of its own ids).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from passpost_dev.jaeger import LocalJaeger


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJaeger]:
    try:
        running = LocalJaeger(home=tmp_path_factory.mktemp("jaeger"))
    except RuntimeError as error:  # no Go to build it with: say what to install
        pytest.fail(f"Jaeger for the tracing tests: {error} (make jaeger)")
    with running:
        yield running
