"""The download cache of the development tools (Kafka's jars, test servers), and its lock.

``$PASSPOST_CACHE_DIR`` or ``~/.cache/passpost``. What is downloaded there is unpacked into a
partial folder and renamed into place under ``exclusive_lock``, so that parallel test processes
(or CI jobs sharing a cache) never see half a download.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$PASSPOST_CACHE_DIR``, else ``~/.cache/passpost``."""
    if cache_dir is not None:
        return Path(cache_dir)
    configured = os.environ.get("PASSPOST_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "passpost"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block, across processes."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
