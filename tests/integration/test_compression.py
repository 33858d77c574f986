"""Compressed input from another client: librdkafka producers with each of Kafka's codecs.

An outside trial produced one lz4 batch (a common producer setting) to an input topic: the worker's
consumer stopped with aiokafka's UnsupportedCodecError (its snappy, lz4 and zstd codecs need cramjam,
which was not installed), and stopped again on every restart until the record was deleted."""
from __future__ import annotations

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
LOSSES = 6


def _window(w, sk: str) -> int:
    out = w.dispatch("health", {"session_key": sk})
    assert out["ok"], out
    return out["data"]["loss_window_size"]


def test_every_codec_a_librdkafka_producer_uses_is_applied(broker, worker_factory) -> None:
    ck = pytest.importorskip("confluent_kafka")
    w = worker_factory("a").start().wait_ready()
    for codec in CODECS:
        p = ck.Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                         "partitioner": "murmur2_random", "linger.ms": 50})
        for i in range(LOSSES):  # one batch per codec: the records wait for the linger together
            p.produce("learn.loss", key=f"codec-{codec}".encode(), value=b'{"loss": 0.%d}' % (i + 1))
        assert p.flush(30) == 0
    def applied() -> bool:
        assert w.alive(), f"the worker stopped:\n{w.log_tail()}"  # as it did without the codecs
        return all(_window(w, f"codec-{c}") == LOSSES for c in CODECS)
    wait_until(applied, 60, what="every compressed batch applied", retry_on=(OSError,))
    assert w.metric("learnstream_dlq_total", reason="bad_json") == 0


def test_the_consumer_has_every_codec() -> None:
    from aiokafka import codec

    assert codec.has_gzip() and codec.has_snappy() and codec.has_lz4() and codec.has_zstd()
