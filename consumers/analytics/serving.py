"""`passpost report` while the analytics consumer runs on DuckDB.

DuckDB allows one process per file to write it, and while it does, no other process may
even read it. So the consumer holding the file answers the report's query itself, on its
HTTP port (``GET /summary``, served by the runtime next to ``/metrics``), and says where in
a small file beside the database (``<file>.serving``: its URL and process id), written when
it starts and removed when it stops. `passpost report` opens the file read-only as before;
only when DuckDB says another process holds it does it read that address and ask there.

PostgreSQL needs none of this: any number of readers beside the writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import httpx

from passpost.consumers.analytics.store import StoreLocked, StoreUnavailable, Summary

SUMMARY_PATH = "/summary"


def duckdb_path(dsn: str) -> Path | None:
    # The query, if any, holds DuckDB settings (store.open_store).
    return Path(dsn.removeprefix("duckdb:///").partition("?")[0]) if dsn.startswith("duckdb:///") else None


def address_file(database: Path) -> Path:
    return database.with_name(database.name + ".serving")


def advertise(database: Path, url: str) -> None:
    """Say where this process answers for ``database``: written atomically, so a reader sees all or nothing."""
    target = address_file(database)
    fd, temp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"url": url, "pid": os.getpid()}, file)
    os.replace(temp, target)


def withdraw(database: Path) -> None:
    """Remove the address file if it is this process's (a later consumer may have written its own)."""
    target = address_file(database)
    try:
        if json.loads(target.read_text("utf-8")).get("pid") == os.getpid():
            target.unlink()
    except (OSError, ValueError):
        pass


def ask(database: Path, now: datetime, locked: StoreLocked) -> Summary:
    """The summary from the process that holds ``database``; ``StoreUnavailable`` in one line if it cannot tell."""
    try:
        url = json.loads(address_file(database).read_text("utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreUnavailable(f"{locked} (and no running analytics consumer says where to ask instead: "
                               "stop the process that holds it)") from None
    try:
        response = httpx.get(url + SUMMARY_PATH, params={"now": now.isoformat()}, timeout=30)
        response.raise_for_status()
        return Summary.from_json(response.text)
    except (httpx.HTTPError, ValueError, KeyError) as error:
        raise StoreUnavailable(f"{locked} (the analytics consumer holding it did not answer at {url}: "
                               f"{type(error).__name__})") from None
