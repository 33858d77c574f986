"""HTTP writes wait for their offset's reply: registered before or after the batch is applied."""
from __future__ import annotations

import asyncio

import pytest

from workers.stream.runtime import _RECENT_BATCHES, Replies

K = ("learn.feedback", 0, 7)


async def test_a_waiter_registered_first_gets_its_reply() -> None:
    r = Replies()
    task = asyncio.create_task(r.wait(K, 5.0))
    while K not in r.waiting:  # the waiter registers
        await asyncio.sleep(0)
    r.resolve({("learn.feedback", 0, 6): {"ok": True, "n": 6}, K: {"ok": True, "n": 7}})
    assert await task == {"ok": True, "n": 7}
    assert not r.waiting


async def test_a_reply_applied_before_the_waiter_registered_is_found() -> None:
    r = Replies()
    r.resolve({K: {"ok": True, "n": 7}})
    for i in range(_RECENT_BATCHES - 1):  # later batches
        r.resolve({("learn.feedback", 1, i): {"ok": True}})
    assert await r.wait(K, 5.0) == {"ok": True, "n": 7}


async def test_replies_older_than_the_kept_batches_time_out() -> None:
    r = Replies()
    r.resolve({K: {"ok": True}})
    for i in range(_RECENT_BATCHES):
        r.resolve({("learn.feedback", 1, i): {"ok": True}})
    with pytest.raises(asyncio.TimeoutError):
        await r.wait(K, 0.01)
    assert not r.waiting  # a timed-out waiter is removed
