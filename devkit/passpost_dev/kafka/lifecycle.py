"""``with broker:`` for the broker and the cluster alike: started on entry, closed on exit, and
closed at once when the start itself fails (a half-started JVM must not outlive the test)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Started:
    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
