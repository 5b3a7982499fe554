"""Stopping child processes, the one way (passpost_dev/processes.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from passpost_dev.processes import stop, stop_all

# Says it is ready, then ignores SIGTERM (or not) and sleeps.
CHILD = ("import signal, sys, time\n"
         "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")


def child(kind: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", CHILD, kind], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_a_process_that_goes_when_asked_is_not_killed() -> None:
    assert stop(child("polite")) == -signal.SIGTERM


def test_a_process_ignoring_the_signal_is_killed_after_the_timeout() -> None:
    started = time.monotonic()
    assert stop(child("stubborn"), timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_an_ended_process_is_left_alone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert stop(process, signal.SIGKILL) == 0


def test_several_processes_share_one_timeout() -> None:
    processes = [child("stubborn"), child("stubborn"), child("stubborn"), child("polite")]
    started = time.monotonic()
    stop_all(processes, timeout=1)
    assert time.monotonic() - started < 2.5  # not 1 s for each in turn
    assert [process.returncode for process in processes] == [-signal.SIGKILL] * 3 + [-signal.SIGTERM]
