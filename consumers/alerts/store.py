"""The alerts consumer's small local store: one JSON file, replaced atomically.

It holds the open alert groups (counts, what was already notified), the escalation
windows, recently seen event ids and the Kafka offsets all of that covers. It is written
after every delivered step, so after a SIGKILL the consumer resumes exactly where its
last delivered notification left it: the runtime seeks to these offsets (an ``ExactlyOnceConsumer``)
and the groups know what they already told the sinks. A write is temp file, fsync,
rename, fsync of the directory: a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from passpost.errors import PasspostError

__all__ = ["StateStore", "StateStoreError"]

FORMAT_VERSION = 1


class StateStoreError(PasspostError, RuntimeError):
    """The state file exists but cannot be used; ``str()`` names it."""


class StateStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:  # a folder, unreadable, not text
            raise StateStoreError(f"PASSPOST_ALERT_STATE_FILE: cannot read {self.path} ({error})") from None
        try:
            document = json.loads(text)
        except ValueError as error:
            raise StateStoreError(f"{self.path}: not a passpost alerts state file ({error})") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise StateStoreError(f"{self.path}: unknown alerts state format (expected version {FORMAT_VERSION})")
        state: dict[str, Any] = document["state"]
        return state

    def check_writable(self) -> None:
        """Create the folder and a file in it now, so a read-only one fails at start, not at every batch."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=self.path.name + ".", suffix=".probe", dir=self.path.parent):
                pass
        except OSError as error:
            raise StateStoreError(f"PASSPOST_ALERT_STATE_FILE: cannot write in {self.path.parent} "
                                  f"({error.strerror or error}); the alerts state file needs a writable folder "
                                  "(a volume in a container)") from None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"version": FORMAT_VERSION, "state": state}, separators=(",", ":"))
        fd, temp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
