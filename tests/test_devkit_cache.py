"""The development tools' download cache and its lock (passpost_dev/cache.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from passpost_dev.cache import cache_root, exclusive_lock


def test_the_cache_is_the_given_folder_else_the_setting_else_the_home_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSPOST_CACHE_DIR", str(tmp_path / "configured"))
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root() == tmp_path / "configured"
    monkeypatch.delenv("PASSPOST_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "passpost"


def test_the_lock_excludes_another_process_until_released(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    other = ("import fcntl, sys\nhandle = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")

    def other_process_gets_it() -> bool:
        return subprocess.run([sys.executable, "-c", other, str(lock)], timeout=60).returncode == 0

    with exclusive_lock(lock):
        assert not other_process_gets_it()
    assert other_process_gets_it()
