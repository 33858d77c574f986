"""workers.local: a directory one process at a time may use."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.errors import ConfigError
from workers.local import hold_dir


def test_a_held_directory_is_refused_naming_the_holder_and_free_once_released(tmp_path: Path) -> None:
    held = hold_dir(tmp_path / "data", "worker")  # creates the directory
    assert (tmp_path / "data" / ".lock").read_text() == str(os.getpid())
    with pytest.raises(ConfigError, match=rf"in use by another worker \(pid {os.getpid()}\)"):
        hold_dir(tmp_path / "data", "worker")  # another open file: another holder, even in this process
    held.close()
    hold_dir(tmp_path / "data", "worker").close()


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    """The kernel drops the lock when its process dies, however it dies: a SIGKILLed worker restarts."""
    code = ("import sys, os, signal; from pathlib import Path; from workers.local import hold_dir; "
            "f = hold_dir(Path(sys.argv[1]), 'worker'); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert done.returncode == -9
    hold_dir(tmp_path, "worker").close()


def test_a_path_that_cannot_be_a_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(ConfigError, match="cannot be the worker's data dir"):
        hold_dir(tmp_path / "file", "worker")
