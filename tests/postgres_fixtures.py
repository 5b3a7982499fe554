"""A real PostgreSQL server for tests, started from the Debian packages in a temp directory.

postgres_server  one server for the session (PASSPOST_TEST_POSTGRES_DSN if set, pointing at
                 a server of your own whose user may CREATE DATABASE)
postgres_dsn     a fresh database on it, for one test
own_postgres     a server of the test's own, for tests that stop and start it

initdb refuses to run as root, so as root the server runs as the system user
``passpost-test`` (created if missing); as anyone else it runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.live import free_port

SERVER_USER = "passpost-test"


def _bin_dir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    message = "PostgreSQL is not installed (apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(message)  # .ci/run installs it: a skip there would hide a broken install step
    pytest.skip(message)


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                       check=True)
    return ["runuser", "-u", SERVER_USER, "--"]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.prefix = _as_server_user()
        # Not under pytest's tmp_path: that is root's 0700 directory, which the server user cannot enter.
        self.root = tempfile.mkdtemp(prefix="passpost-pg-")
        os.chmod(self.root, 0o755)
        if self.prefix:
            shutil.chown(self.root, SERVER_USER)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = free_port()
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.prefix, os.path.join(self.bin, tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.dsn.rsplit("/", 1)[0] + f"/{name}"

    def cleanup(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


class _External:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def create_database(self) -> str:
        return PostgresServer.create_database(self)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    configured = os.environ.get("PASSPOST_TEST_POSTGRES_DSN")
    if configured:
        yield _External(configured)  # type: ignore[misc]
        return
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, for tests that stop and start it."""
    with running_postgres() as server:
        yield server


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def wait_for(condition, timeout: float = 60.0, interval: float = 0.1, message: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


def rows(dsn: str, query: str) -> list[tuple[object, ...]]:
    """``query``'s rows, or none while the table does not exist yet (a consumer creates it at start)."""
    import psycopg

    with psycopg.connect(dsn) as connection:
        try:
            return connection.execute(query).fetchall()
        except psycopg.errors.UndefinedTable:
            return []
