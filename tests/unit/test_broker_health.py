"""Broker reachability from probe results (workers/stream/broker_health.py)."""
from __future__ import annotations

import asyncio

from workers.stream.broker_health import BrokerHealth


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_unreachable_only_after_failing_for_the_configured_time_and_back_at_once() -> None:
    clock = Clock()
    h = BrokerHealth("127.0.0.1:1", 10.0, clock=clock)
    assert h.reachable()
    h.observe(False)
    clock.t += 9.0
    h.observe(False)
    assert h.reachable()  # 9 s of failures: not yet
    clock.t += 1.5
    h.observe(False)
    assert not h.reachable() and h.unreachable_for() == 10.5
    h.observe(True)
    assert h.reachable() and h.unreachable_for() == 0.0


def test_no_probes_is_not_an_outage() -> None:
    clock = Clock()
    h = BrokerHealth("127.0.0.1:1", 10.0, clock=clock)
    clock.t += 3600  # the probe loop was held up (a long table recovery): nothing says the broker is down
    assert h.reachable()


def test_probe_of_a_closed_port_fails_fast() -> None:
    from workers.local import free_port

    h = BrokerHealth(f"127.0.0.1:{free_port()}", 10.0)
    assert asyncio.run(h.probe()) is False and h.failing_since is not None


def test_each_spell_of_failed_probes_counts_one_outage() -> None:
    """Runtime.log_unchanged compares this count: any failed probe, even a short spell, may hide a restart."""
    h = BrokerHealth("127.0.0.1:1", 10.0, clock=Clock())
    h.observe(True)
    assert h.outages == 0
    h.observe(False)
    h.observe(False)
    assert h.outages == 1 and h.reachable()  # counted at once, long before "unreachable"
    h.observe(True)
    h.observe(False)
    assert h.outages == 2
