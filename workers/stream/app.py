"""The faust App ``learnstream``, built from Settings: tables, the agent, the signals, the routes.

Only wiring lives here: the runtime (batches -> processor -> downstream and replies) is
``runtime.py``, the HTTP routes ``web.py``, the metrics ``monitoring.py``, and every touch of
faust's internals ``faust_internals.py``.
"""
from __future__ import annotations

from typing import Any

import faust

from workers.kafka import broker_compat
from workers.kafka.topics import input_topics, topics, use_folder
from workers.stream import faust_internals
from workers.stream.batching import LearnStream
from workers.stream.http_guard import Guard, web_options
from workers.stream.memory import install_heap_trim
from workers.stream.monitoring import install_metrics
from workers.stream.runtime import PRODUCER_BATCH_BYTES, PRODUCER_LINGER_MS, Runtime
from workers.stream.settings import Settings
from workers.stream.tables import TABLE_NAMES
from workers.stream.web import install_routes
from workers.verbs.surface import configure as configure_verbs

__all__ = ("build_app", "preflight")


def preflight(settings: Settings, *, quiet: bool = False) -> Guard:
    """What a worker refuses before it starts anything, the embedded broker included (a refusal after it
    printed the broker's address as on a good start): its tokens, TLS and secret files (the HTTP guard
    it returns; a non-loopback address without tokens), and its verbs' options (a protocols embedder
    that does not load). The verbs are configured with them. ``quiet``: the authentication mode's
    warning waits for ``guard.auth.warn()``."""
    guard = Guard(settings, quiet=quiet)
    use_folder(settings.topics_dir)
    configure_verbs(settings.verb_options(), settings.scoring_api_key_reader())
    return guard


def build_app(settings: Settings, guard: Guard | None = None) -> tuple[faust.App, Runtime]:
    """The faust app and its runtime. ``guard``: what :func:`preflight` gave ``run_worker`` before it
    started anything; else preflight runs here."""
    faust_internals.set_fetch_max_wait(settings.fetch_max_wait_ms)
    if not settings.broker:
        raise ValueError("settings.broker must be set (the CLI starts the embedded broker first)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if guard is None:
        guard = preflight(settings)
    app = faust.App(
        settings.app_id,
        broker=",".join(f"kafka://{b}" for b in settings.broker.split(",")),
        store="learnstream://",  # faust's RocksDB store, WAL on and unsynced, memory shared (workers/stream/store.py)
        datadir=str(settings.data_dir),
        web_host=settings.web_host, web_port=settings.web_port, web_bind=settings.web_bind or settings.web_host,
        canonical_url=f"{settings.scheme}://{settings.web_host}:{settings.web_port}",
        web_application_options=web_options(guard), web_ssl_context=guard.server_ssl,
        # faust's own views serve raw table values and the cluster layout to anyone: off
        web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False, web_stats_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=settings.partitions, topic_replication_factor=settings.replication,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.worker_id,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_max_batch_size=PRODUCER_BATCH_BYTES, producer_linger_ms=PRODUCER_LINGER_MS,
        key_serializer="raw", value_serializer="raw",
        web_enabled=True, web_in_thread=False,
        Stream=LearnStream,  # adds take_batches
        loghandlers=[],
    )
    if settings.kafka:
        _apply_kafka_security(app, settings)
    if settings.broker_kind == "embedded":
        broker_compat.rejoin_on_empty_assignment()
        broker_compat.hold_empty_fetches()
        if settings.transactions:
            broker_compat.ignore_finished_aborts()
    tables = {
        # bytes types make faust pick the raw codec for the changelog (a Schema(...) argument is
        # silently ignored there and falls back to json, which cannot carry binary values).
        verb_table: app.Table(name, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                              options={"driver": "rocksdict", "shared_block_cache_bytes": settings.block_cache_bytes,
                                       "memtable_bytes": settings.memtable_bytes},
                              help=f"learnstream {verb_table} state")
        for verb_table, name in TABLE_NAMES.items()
    }
    rt = Runtime(app, settings, tables)
    inputs = [t for t in input_topics() if t.verb or t.ops or t.role == "commands"]
    for t in topics().values():
        rt.channel(t.role)  # declare every topic (faust creates missing ones)
    channel = app.topic(*[t.name for t in inputs], key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")

    async def learn(stream: Any) -> None:
        await rt.consume(stream)

    app.agent(channel, name="learnstream.learn", concurrency=1)(learn)  # >1 loses messages (faust #606)

    # first, so the bulk restore's patch (installed by watch) wraps it: a partition emptied for a
    # truncated changelog is then rebuilt in bulk too
    faust_internals.install_truncation_recovery()  # a broker that lost acknowledged records: rebuild, not crash
    faust_internals.watch(app, rt.guard)
    faust_internals.bulk_recovery(app, rt.bulk_restore)
    if rt.txn is not None:
        faust_internals.transactional(app, rt.before_recovery, rt.probe.last_record)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: Any, **_: Any) -> None:
        rt.processor.forget()
        rt.guard.reset()
        rt.active_partitions = []  # until the next assignment (faust's assignor keeps listing the revoked ones)

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        rt.processor.forget()
        rt.guard.reset()
        # writes waiting on a partition another worker now owns get their answer now, not at their timeout
        mine = {tp.partition for tp in assigned if tp.topic in rt.input_names}
        rt.active_partitions = sorted(mine)
        rt.replies.release_except(mine)

    @app.on_rebalance_complete.connect
    async def _recovered(app: faust.App, **_: Any) -> None:
        rt.processor.forget()  # nothing read while recovering may be the base of a batch

    @app.service
    class _Probe(faust.Service):  # the guard's probe clients live as long as the app
        async def on_start(self) -> None:
            await rt.probe.start()

        async def on_stop(self) -> None:
            rt.stop_rejoin()
            await rt.probe.close()
            if rt.dead_peers is not None:
                await rt.dead_peers.close()
            if rt.rewriter is not None:
                await rt.rewriter.close()
            if rt.purge is not None:
                await rt.purge.close()
            if rt.txn is not None:
                await rt.txn.close()

    install_routes(app, rt, guard)
    install_metrics(app, rt, inputs)
    install_heap_trim(app)
    return app, rt


def _apply_kafka_security(app: faust.App, settings: Settings) -> None:
    """SASL/TLS pass-through: faust takes a credentials object, built from the same kwargs as aiokafka."""
    k = settings.kafka_kwargs()
    context = k.get("ssl_context")
    if k.get("sasl_mechanism"):
        app.conf.broker_credentials = faust.SASLCredentials(
            username=k.get("sasl_plain_username"), password=k.get("sasl_plain_password"),
            mechanism=k["sasl_mechanism"], ssl_context=context)
    elif context is not None:
        app.conf.broker_credentials = context
