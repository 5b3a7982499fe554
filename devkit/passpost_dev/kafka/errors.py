"""The one error the local broker raises, and the look-up of the programs it runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from passpost.errors import PasspostError


class LocalKafkaError(PasspostError, RuntimeError):
    """The local broker could not be provided; the first line of ``str()`` says why."""


def require_executable(name: str, purpose: str) -> str:
    """The path of program ``name`` on PATH; else a one-line ``LocalKafkaError`` saying what it was for."""
    found = shutil.which(name)
    if found is None:
        raise LocalKafkaError(f"{purpose}, but `{name}` is not on PATH")
    return found


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` if there is one, else ``java`` on PATH (Java 17+ runs the broker)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return require_executable("java", "Java 17+ is needed to run the Kafka broker")
