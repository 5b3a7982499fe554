"""The broker's JVM: its command line, its class-data-sharing archive, and the running process.

Kafka runs from the cached jars with ``java -cp libs/*``: no distribution tarball, no scripts.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

from passpost_dev.processes import stop


def java_command(java: str, libs: Path, workdir: Path, heap: str, sharing: list[str], main: str,
                 *args: str) -> list[str]:
    """The command running Java class ``main`` from ``libs`` with the broker's JVM flags and its log set-up."""
    return [
        java,
        *sharing,
        # Writing the archive warns about every class it cannot hold; reading a stale
        # one warns too. Either way the JVM carries on, so the log need not say so.
        "-Xlog:cds=off,cds+dynamic=off",
        f"-Xmx{heap}",
        "-Xms64m",
        # Serial GC and the C1-only JIT start fastest on two cores; a test broker
        # moves little data, so peak throughput matters less than start-up.
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={workdir / 'logs'}",
        "-cp", f"{libs}/*",
        main, *args,
    ]


def class_archive(libs: Path, java: str) -> Path:
    """Where the broker's class-data-sharing archive for this JDK lives.

    Loading and verifying Kafka's and Scala's classes is most of a broker's start-up on
    two cores; an AppCDS archive of them roughly halves it. The archive is only valid
    for the JVM build that wrote it, so its name is keyed on the JVM's files.
    """
    launcher = Path(os.path.realpath(java))
    identity = [launcher, *sorted(launcher.parent.parent.glob("lib/server/libjvm.*"))]
    key = "|".join(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in identity)
    return libs.parent / f"classes-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


class BrokerProcess:
    """The running JVM, kept apart from ``LocalKafka`` so that a finalizer can end it
    (and remove the temp dir) without holding a reference to the ``LocalKafka``."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        # (file the JVM dumps its class archive into at exit, where it is kept after).
        self.archive_dump: tuple[Path, Path] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; keep the class archive if the JVM wrote it whole."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash); also reaps a JVM that exited by itself."""
        self._end(signal.SIGKILL, None)

    def send(self, signum: signal.Signals) -> bool:
        """Send ``signum`` to the running JVM (SIGSTOP, SIGCONT); False if it does not run."""
        if self.popen is None or self.popen.poll() is not None:
            return False
        self.popen.send_signal(signum)
        return True

    def _end(self, signum: signal.Signals, timeout: float | None) -> None:
        popen, self.popen = self.popen, None
        if popen is None:
            return
        stop(popen, signum, timeout)
        self._keep_archive(popen)

    def _keep_archive(self, popen: subprocess.Popen[bytes]) -> None:
        dump, self.archive_dump = self.archive_dump, None
        if dump is None:
            return
        partial, final = dump
        # A JVM killed by SIGKILL may have been halfway through writing the archive.
        if popen.returncode != -signal.SIGKILL and partial.is_file() and partial.stat().st_size:
            os.replace(partial, final)
        else:
            partial.unlink(missing_ok=True)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of the broker's log, for an error message."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"
