"""503 episodes: a run of postbacks refused because Kafka (or the spool) could not keep them, said
in two lines, not one per request.

A broker's death refuses every postback for the fencing time (about ``broker.session.timeout.ms``;
README, "Reliability"): at 40 postbacks a second, hundreds of identical lines. The first refusal of
an episode is a WARNING with its reason; a postback accepted once none was refused for
``QUIET_SECONDS`` ends it with a WARNING giving how many were refused and for how long (while one
partition's leader is away, postbacks for the others are accepted in between: still one episode).
Each refusal in between is at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("passpost.ingest")

QUIET_SECONDS = 1.0


class RefusalEpisodes:
    def __init__(self, on_episode: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_episode = on_episode
        self._clock = clock
        self._since: float | None = None
        self._last = 0.0
        self._refused = 0

    @property
    def in_episode(self) -> bool:
        return self._since is not None

    def refused(self, reason: object) -> None:
        self._last = self._clock()
        if self._since is None:
            self._since, self._refused = self._last, 1
            self._on_episode()
            log.warning("answering 503 from now on until Kafka confirms again: %s", reason)
            return
        self._refused += 1
        log.debug("answering 503: %s", reason)

    def accepted(self) -> None:
        if self._since is None:  # the common case: one attribute read per accepted request
            return
        if self._clock() - self._last < QUIET_SECONDS:
            return
        log.warning("answering 200 again: %d postbacks refused with 503 over %.1f s", self._refused,
                    self._last - self._since)
        self._since, self._refused = None, 0
