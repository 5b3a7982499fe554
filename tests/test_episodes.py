"""A run of 503s is two lines: its first refusal with the reason, and its end with the count and
duration (ingest/episodes.py); the episodes are counted for the alert."""

from __future__ import annotations

import logging

import pytest

from passpost.ingest.episodes import RefusalEpisodes


def test_a_run_of_refusals_is_two_lines_and_one_episode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="passpost.ingest")
    now = [10.0]
    started: list[int] = []
    episodes = RefusalEpisodes(lambda: started.append(1), clock=lambda: now[0])
    episodes.accepted()
    for number in range(300):
        episodes.refused("Kafka did not confirm within 2 s")
        now[0] += 0.035
        if number % 10 == 0:
            episodes.accepted()  # another partition's leader is up: the episode goes on
    now[0] += 1.0 - 0.035
    episodes.accepted()
    episodes.accepted()
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["answering 503 from now on until Kafka confirms again: Kafka did not confirm within 2 s",
                     "answering 200 again: 300 postbacks refused with 503 over 10.5 s"]
    assert started == [1] and not episodes.in_episode
