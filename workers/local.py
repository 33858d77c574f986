"""Local process plumbing shared by the embedded broker, the worker launcher, the demo, ``learnstream
mcp``, the benchmarks and the tests: a free loopback port, and a child that dies with its parent."""
from __future__ import annotations

import contextlib
import ctypes
import socket

__all__ = ("free_port", "parent_death_signal")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it; another process may still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (the thread that started it)
    exits, however it exits. For a ``preexec_fn``: runs in the child between fork and exec."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
