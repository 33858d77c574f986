"""Running one worker process (``learnstream worker``)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path

import faust

from workers.kafka.broker import EmbeddedBroker
from workers.stream.peers import expel_group_members
from workers.errors import ConfigError
from workers.local import bind_error, hold_dir
from workers.stream import faust_internals
from workers.stream.app import build_app, preflight
from workers.stream.collector import tune_collector
from workers.stream.log_identity import ensure_tables_match_log
from workers.stream.logs import announce
from workers.stream.logs import configure as configure_logs
from workers.stream.provision import ensure_topics_sync
from workers.stream.settings import Settings
from workers.stream.transactions import check_transactions

__all__ = ("run_worker",)

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Run the faust worker until SIGTERM/SIGINT. Starts the embedded broker if none is configured."""
    # what is logged before faust sets up its own handlers (broker start, topics, tables) is JSON too
    configure_logs(logging.getLogger(), settings.log_format)
    # Two workers on one data dir would share RocksDB tables: the second used to join the group, take
    # partitions and crash on their LOCK files mid-rebalance. Held until this function returns.
    held = hold_dir(settings.data_dir, "worker")  # noqa: F841 - the lock lives as long as the file is open
    web = settings.web_bind or settings.web_host
    # before the broker starts: faust would fail on the bind after it and the tables, with a traceback
    if (why := bind_error(web, settings.web_port)) is not None:
        raise ConfigError(f"cannot listen on {web}:{settings.web_port} ({why}); pick another HTTP port "
                          f"(--web-port, LEARNSTREAM_WEB_PORT) or address (LEARNSTREAM_WEB_BIND)")
    # refusals before the embedded broker starts (one printed its address first, as on a good start); the
    # authentication warning after it: the broker's address is a worker's first line
    guard = preflight(settings, quiet=True)
    broker = None
    if not settings.broker:
        # the log lives next to the tables: stopping and starting the worker keeps both
        broker = EmbeddedBroker(data_dir=settings.data_dir / "broker").start()
        # the caller's settings (CLI flags included) with the broker filled in, never re-read from the env
        settings = dataclasses.replace(settings, broker=broker.bootstrap, broker_kind="embedded")
        announce(f"embedded broker on {broker.bootstrap}, data in {broker.data_dir}", settings.log_format)
    # at the worker's level from here (not before: the broker's address stays the first line at info): the
    # authentication warning came at LEARNSTREAM_LOG_LEVEL=critical, before faust set the level
    logging.getLogger().setLevel(settings.log_level.upper())
    guard.auth.warn()
    ensure_topics_sync(settings)
    if settings.transactions:  # before the group is joined: refused in one line, not crashed at the first assignment
        asyncio.run(check_transactions(settings.broker, settings.app_id, **settings.kafka_kwargs()))
    app, rt = build_app(settings, guard)
    changelogs = {t.name: t.changelog_topic.get_topic_name() for t in rt.tables.values()}
    asyncio.run(ensure_tables_match_log(settings.data_dir, Path(app.conf.tabledir), changelogs, settings.broker,
                                        **settings.kafka_kwargs()))
    if settings.broker_kind == "embedded":
        # last before joining: a worker that refuses to start must not make the running members rejoin
        asyncio.run(expel_group_members(settings.broker, settings.app_id, **settings.kafka_kwargs()))
    _announce_ready(app, rt, settings)

    class Worker(faust.Worker):
        def on_setup_root_logger(self, root: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(root, level)
            configure_logs(root, settings.log_format)  # JSON lines and rate-limited repeats

        def _install_signal_handlers_unix(self) -> None:
            super()._install_signal_handlers_unix()
            # SIGHUP (its terminal closed; or it was stopped in a process group whose shell exited,
            # which the kernel sends SIGHUP and SIGCONT) stops it as SIGTERM does: with its last
            # commit, instead of the default action's abrupt exit
            self.loop.add_signal_handler(signal.SIGHUP, self._on_sigterm)

        # HTTP writes waiting to be applied answer at once (504, in the log): the web server's stop waits for them
        def _on_sigterm(self) -> None:
            rt.replies.stop()
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            rt.replies.stop()
            super()._on_sigint()

    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    tune_collector()
    faust_internals.no_spinner(worker)  # else every debug log call of faust and aiokafka makes a record
    faust_internals.quick_loop_close(worker)  # a stop ends 0.9 s sooner
    logger.info("worker pid %s, web http://%s:%s", os.getpid(), settings.web_host, settings.web_port)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if broker is not None:
            broker.stop()
    return 0


# How often the start-up task looks whether table recovery finished (one line is printed then).
_READY_POLL_S = 0.1


def ready_line(settings: Settings) -> str:
    """The one line ``learnstream worker`` prints once it serves: where its HTTP API is, which broker."""
    return (f"learnstream worker ready: {settings.scheme}://{settings.web_host}:{settings.web_port} "
            f"broker={settings.broker} ({settings.broker_kind}) pid={os.getpid()}")


def _announce_ready(app: object, rt: object, settings: Settings) -> None:
    @app.task  # type: ignore[attr-defined]
    async def announce_ready() -> None:
        while not rt.is_ready():  # type: ignore[attr-defined]
            await asyncio.sleep(_READY_POLL_S)
        announce(ready_line(settings), settings.log_format)
