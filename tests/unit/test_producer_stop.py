"""Dropping a transactional producer never blocks the worker (workers/stream/transactions.py).

aiokafka's ``stop()`` waits for what its sender still has in flight, a transactional request it
keeps retrying included; ``Transactions`` drops producers on every rebalance, fencing and lost
broker, so a stop that never returns would stall the worker for good. The producer here is a stand-in
for aiokafka's (an edge this project does not own) whose stop never returns, as such a sender's would.
"""
from __future__ import annotations

import asyncio

from workers.stream import transactions
from workers.stream.transactions import Transactions


class _StuckProducer:
    def __init__(self) -> None:
        self._txn_manager = type("Txn", (), {"transactional_id": "app-changelog-7"})()
        self.stop_cancelled = False
        self.client = self
        self.client_closed = False

    async def stop(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stop_cancelled = True
            raise

    async def close(self) -> None:  # producer.client.close()
        self.client_closed = True


class _FencedProducer(_StuckProducer):
    async def stop(self) -> None:
        raise RuntimeError("fenced")


async def test_a_producer_whose_stop_never_returns_is_cancelled_and_its_connections_closed(monkeypatch, caplog) -> None:
    monkeypatch.setattr(transactions, "_STOP_TIMEOUT_S", 0.2)
    txns = Transactions("127.0.0.1:1", "app", "app", max_batch_size=16384, linger_ms=0, max_request_size=1_000_000)
    stuck, fenced = _StuckProducer(), _FencedProducer()
    txns.producers.update({0: stuck, 1: fenced})
    await asyncio.wait_for(txns.close(), 5)  # without the bound: waits for ever
    assert stuck.stop_cancelled and stuck.client_closed
    assert "transactional producer app-changelog-7 did not stop" in caplog.text  # which one, for the operator
    assert not fenced.client_closed  # a stop that raised is done: nothing more to close
    assert txns.producers == {}
