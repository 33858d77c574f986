"""Local process plumbing shared by the embedded broker, the worker launcher, the demo, ``learnstream
mcp``, the benchmarks and the tests: a free loopback port, a child that dies with its parent, and a
directory one process at a time may use."""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from workers.errors import ConfigError

__all__ = ("free_port", "bind_error", "parent_death_signal", "hold_dir")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it; another process may still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now ("Address already in use", "Cannot assign
    requested address", ...), or None when it could (as servers bind: a port whose last connections
    linger in TIME_WAIT counts as free)."""
    if not 0 < port < 65536:  # socket.bind raises OverflowError, not OSError, past 65535
        return "the port must be 1..65535"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None


def parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (the thread that started it)
    exits, however it exits. For a ``preexec_fn``: runs in the child between fork and exec."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def hold_dir(directory: Path, what: str) -> IO[str]:
    """Make this process the only ``what`` using ``directory`` for as long as the returned file stays
    open: an advisory lock on ``directory/.lock``, which the kernel drops when the process dies however
    it dies (a SIGKILLed worker's restart finds it free). ConfigError, naming the holder's pid, when
    another process holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f = open(directory / ".lock", "a+", encoding="ascii")  # noqa: SIM115 - held open by the caller
    except OSError as exc:  # a file in the way, a read-only or missing parent
        raise ConfigError(f"{directory}: cannot be the {what}'s data dir ({exc.strerror or exc})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"{directory} is in use by another {what} (pid {holder}); give each its own "
                          f"--data-dir (LEARNSTREAM_DATA_DIR)") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
