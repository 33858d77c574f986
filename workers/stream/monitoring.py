"""What a worker exports on ``/metrics``: the domain metrics (``workers.stream.metrics``) and faust's
Prometheus sensor on its own registry, made lean; plus the timers that keep the readiness and
consumer-lag gauges current.
"""
from __future__ import annotations

import logging
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry, generate_latest

from workers.kafka.topics import Topic
from workers.stream import faust_internals, metrics
from workers.stream.runtime import Runtime

__all__ = ("LeanPrometheusMonitor", "install_metrics", "SILENCED_FAUST_SERIES")

logger = logging.getLogger(__name__)

_LAG_INTERVAL_S = 2.0
_BROKER_PROBE_S = 1.0
_PEERS_INTERVAL_S = 2.0  # how often the group's other workers are probed (workers/stream/peers.py)


class LeanPrometheusMonitor(PrometheusMonitor):
    """faust's Prometheus sensor without its per-message series.

    Those hooks update labelled series on every message, table access and send (~45 µs a
    message, measured in bench/README.md "feedback"); ``learnstream_events_total`` and
    ``learnstream_batch_seconds`` count the same work per batch. Commit, rebalance, assignment
    and web metrics stay. The per-message hooks fall back to faust's plain Monitor, which is what
    a faust app without a sensor runs.
    """

    on_message_in = Monitor.on_message_in
    on_stream_event_in = Monitor.on_stream_event_in
    on_stream_event_out = Monitor.on_stream_event_out
    on_message_out = Monitor.on_message_out
    on_table_get = Monitor.on_table_get
    on_table_set = Monitor.on_table_set
    on_send_initiated = Monitor.on_send_initiated
    on_send_completed = Monitor.on_send_completed


# faust's series fed only by the per-message hooks LeanPrometheusMonitor turns off
# (learnstream_events_total, learnstream_messages_total and learnstream_batch_seconds measure that work).
SILENCED_FAUST_SERIES = (
    "messages_received", "active_messages", "messages_received_per_topics", "messages_received_per_topics_partition",
    "events_runtime_latency", "total_events", "total_active_events", "total_events_per_stream", "table_operations",
    "topic_messages_sent", "total_sent_messages", "producer_send_latency")


# Prometheus' text format without its "; charset=utf-8" (CONTENT_TYPE_LATEST): aiohttp refuses a charset
# inside content_type (ValueError, a 500 on every scrape), and the exposition format is UTF-8 anyway
_CONTENT_TYPE = "text/plain; version=0.0.4"


def install_metrics(app: faust.App, rt: Runtime, inputs: list[Topic]) -> None:
    """The lean faust sensor, ``/metrics`` (both registries), ``/metrics/faust`` (faust's alone), the timers."""
    faust_registry = CollectorRegistry(auto_describe=True)
    # a fixed prefix (not the app id) so dashboards work for any deployment
    faust_metrics = FaustMetrics.create(faust_registry, "faust")
    app.monitor = LeanPrometheusMonitor(metrics=faust_metrics)
    for name in SILENCED_FAUST_SERIES:  # their hooks are off: exported, they would read 0 forever
        faust_registry.unregister(getattr(faust_metrics, name))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body = generate_latest(metrics.REGISTRY) + generate_latest(faust_registry)
        return web.bytes(body, content_type=_CONTENT_TYPE)

    @app.page("/metrics/faust")
    async def faust_metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(faust_registry), content_type=_CONTENT_TYPE)

    names = {t.name for t in inputs}
    for name in names:  # a series from the start: an alert on lost input sees 0, not nothing
        metrics.INPUT_DELETED_UNREAD.labels(name)
        if rt.purge is not None:
            metrics.INPUT_PURGES.labels(name)

    # read at each scrape: the gauge and /ready never disagree (a timer lags a probe behind)
    metrics.READY.set_function(lambda: 1 if rt.is_ready() else 0)

    @app.timer(_BROKER_PROBE_S)
    async def broker_probe() -> None:
        await rt.broker_health.probe()

    if rt.dead_peers is not None:
        @app.timer(_PEERS_INTERVAL_S)
        async def dead_peers() -> None:
            try:
                await rt.dead_peers.check()
            except Exception as exc:  # noqa: BLE001 - the broker unreachable, a group not yet formed: next time
                logger.debug("dead peer check failed: %r", exc)

    if rt.purge is not None:
        @app.timer(rt.settings.embedded_input_purge_s)
        async def input_purge() -> None:
            try:
                await rt.purge.tick()
            except Exception as exc:  # noqa: BLE001 - nothing deleted: the log is longer until the next tick
                logger.warning("input purge failed: %r", exc)

    @app.timer(_LAG_INTERVAL_S)
    async def lag() -> None:
        consumer = app.consumer
        lag_by_topic: dict[str, int] = {t: 0 for t in names}
        try:
            assignment = consumer.assignment()
        except Exception:  # noqa: BLE001 - not started yet
            return
        for tp in assignment:
            if tp.topic not in names:
                continue
            hw = consumer.highwater(tp)  # from the last Fetch response: no extra request
            committed = faust_internals.committed_offset(app, tp.topic, tp.partition)
            if hw is not None and committed is not None:
                lag_by_topic[tp.topic] += max(hw - committed, 0)  # committed = next offset to read
        for t, n in lag_by_topic.items():
            metrics.CONSUMER_LAG.labels(t).set(n)
