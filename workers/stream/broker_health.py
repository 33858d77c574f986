"""Is the broker reachable? A Metadata probe every second; /ready and ``learnstream_ready`` follow it.

faust keeps retrying through an outage and serves stale reads meanwhile, so without this a worker
whose broker is gone looks healthy (and HTTP writes hang). After ``broker_unreachable_s`` without a
successful probe the worker reports not ready (503, gauge 0) and answers writes 503 at once; the
first successful probe makes it ready again. Transitions are logged once each.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers.kafka.broker import metadata_ok

__all__ = ("BrokerHealth",)

logger = logging.getLogger(__name__)

# A probe that takes longer than this counts as a failure (a hung broker accepts TCP and says nothing).
_PROBE_TIMEOUT_MS = 1000


class BrokerHealth:
    def __init__(self, bootstrap: str, unreachable_after_s: float, kafka: dict | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap = bootstrap
        self.kafka = kafka or {}  # SASL/TLS settings: the probe must speak to the broker as the worker does
        self.unreachable_after_s = unreachable_after_s
        self.clock = clock
        # Since when every probe failed (None: the last one succeeded). Only failed probes count: a
        # probe loop held up by a busy event loop (table recovery) says nothing about the broker.
        self.failing_since: float | None = None
        # Failed-probe spells so far: a worker that saw one cannot trust what it read before it (the
        # broker may have restarted and lost records it had acknowledged; runtime.Runtime.log_unchanged).
        self.outages = 0
        self._down_logged = False

    def unreachable_for(self) -> float:
        """Seconds since probes began failing without a success in between (0 when the last one succeeded)."""
        return 0.0 if self.failing_since is None else max(self.clock() - self.failing_since, 0.0)

    def reachable(self) -> bool:
        return self.unreachable_for() < self.unreachable_after_s

    def observe(self, ok: bool) -> None:
        if ok:
            if self._down_logged:
                logger.warning("broker %s reachable again after %.0f s", self.bootstrap, self.unreachable_for())
                self._down_logged = False
            self.failing_since = None
            return
        if self.failing_since is None:
            self.failing_since = self.clock()
            self.outages += 1
        if not self.reachable() and not self._down_logged:
            logger.error("broker %s unreachable for %.0f s: /ready answers 503 and writes are refused until it "
                         "is back", self.bootstrap, self.unreachable_for())
            self._down_logged = True

    async def probe(self) -> bool:
        """One probe; one that ran out of time is tried again at once, and counts as failed only if
        that fails too. A broker that is down refuses at once and counts at once. A timeout alone can
        be this process's own pause (suspended mid-probe by SIGSTOP or a paused VM, while the
        clock ran on) or one slow answer (the embedded broker serialising a large log), and every
        failed spell counts as an outage that stops the partitions' transactions until a rejoin
        (``outages``): a benchmark that froze its worker mid-probe saw its round run at a third of its
        rate, the input read again."""
        t0 = time.monotonic()
        ok = await metadata_ok(self.bootstrap, timeout_ms=_PROBE_TIMEOUT_MS, **self.kafka)
        if not ok and time.monotonic() - t0 >= _PROBE_TIMEOUT_MS / 1000:
            ok = await metadata_ok(self.bootstrap, timeout_ms=_PROBE_TIMEOUT_MS, **self.kafka)
        self.observe(ok)
        return ok
