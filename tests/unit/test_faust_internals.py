"""faust changing under learnstream fails here, not in production.

``workers/stream/faust_internals.py`` is the one module that relies on faust beyond its documented API;
:data:`TOUCHED` lists each faust function it patches or whose private behaviour it relies on. Their
source, as faust-streaming 0.15.3 ships it, is hashed below: a faust release that changes any of them
fails this test, and the touch must be checked again (then the hash and ``FAUST_CHECKED`` updated).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect

import faust
import pytest

from workers.stream import faust_internals

# sha256 (first 16 hex) of each touched function's source in faust-streaming 0.15.3
_CHECKED_SOURCES = {
    "tables.recovery.Recovery._build_offsets": "f7626a56c3b2b33a",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread.verify_event_path": "f7025e20d8664e1f",
    "transport.consumer.Consumer.__init__": "98de5b3b169c981e",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._verify_aiokafka_event_path": "f47d08227e3ca266",
    "transport.consumer.Consumer._new_offset": "7524555f309a6493",
    "transport.consumer.Consumer.perform_seek": "b2fa31dd2a8784d3",
    "transport.consumer.Consumer._drain_messages": "8308d11bc7a290dc",
    "transport.consumer.Consumer._add_gap": "d28ad8e076b67739",
    "transport.consumer.ThreadDelegateConsumer.seek_wait": "36f330ed369996c3",
    "transport.producer.ProducerBuffer.flush": "97b9a044b51134e7",
    "transport.producer.ProducerBuffer.flush_atmost": "0983a14b236256be",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer": "684c167041ff0044",
    "stores.rocksdb.Store._open_for_partition": "102bfa96ef863517",
    "stores.rocksdb.Store._db_for_partition": "e5e138d3d16323a2",
    "stores.rocksdb.Store.persisted_offset": "b2bed8c216d04ea8",
    "streams.Stream._enable_passive": "e89c3846ccd7300a",
    "streams.Stream.add_processor": "6a735256dc859830",
    "stores.rocksdb.Store.partition_path": "4fac3075c51c1fad",
    "stores.rocksdb.RocksDBOptions.__init__": "e343650ebe4fa9d8",
    "transport.drivers.aiokafka.Producer._ensure_producer": "4444c75c31a07171",
    "worker.Worker._setup_spinner_handler": "f5bb2af38ea73661",
    "tables.manager.TableManager.on_rebalance": "e9c3a70e219daffe",
    "tables.recovery.Recovery._build_highwaters": "881584f42842eb7e",
    "transport.consumer.Consumer.pause_partitions": "a51f7bdf316a0af1",
    "transport.consumer.Consumer.resume_partitions": "0ce68544cb09fe58",
    "transport.consumer.Consumer._is_changelog_tp": "c50db2141d6df34e",
    "transport.consumer.ThreadDelegateConsumer.__init__": "715814ce37c57592",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer": "ab708b087b3476fd",
    "transport.drivers.aiokafka.AIOKafkaConsumerThread.on_thread_stop": "08913f186d43e6ff",
    "transport.consumer.Consumer.wait_empty": "f29971a4a89cf07e",
    "transport.consumer.Consumer._clean_unacked_messages": "bcd8df262d5e2e09",
    "mode:worker.Worker._sentinel_task": "9b2952d563068187",
    "tables.manager.TableManager.on_start": "5e67c90893df7194",
}


def _source_hash(dotted: str) -> str:
    """The hash of one function's source as the faust module file has it (patches do not change it);
    ``mode:`` names one of mode-streaming (faust's service library)."""
    package, _, dotted = dotted.rpartition(":")
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        try:
            module = importlib.import_module((package or "faust") + "." + ".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        names = parts[i:]
        break
    else:
        raise AssertionError(f"no faust module in {dotted}")
    source = inspect.getsource(module)
    node: ast.AST = ast.parse(source)
    for name in names:
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    return hashlib.sha256(ast.get_source_segment(source, node).encode()).hexdigest()[:16]


def test_every_touch_is_checked() -> None:
    assert set(faust_internals.TOUCHED) == set(_CHECKED_SOURCES)


@pytest.mark.parametrize("dotted", sorted(_CHECKED_SOURCES))
def test_faust_source_is_the_one_checked(dotted: str) -> None:
    assert _source_hash(dotted) == _CHECKED_SOURCES[dotted], (
        f"faust {faust.__version__} changed faust.{dotted}, which workers/stream/faust_internals.py relies on "
        f"({faust_internals.TOUCHED[dotted]}); it was checked against {faust_internals.FAUST_CHECKED}")


def test_the_private_names_read_exist() -> None:
    """Names read (not patched) by faust_internals: a rename would only show at run time."""
    from faust.stores import rocksdb
    from faust.streams import _current_event

    assert faust.__version__ == faust_internals.FAUST_CHECKED
    assert rocksdb.Store.offset_key == b"__faust\0offset__"
    assert _current_event.get(None) is None  # a ContextVar
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert callable(GroupCoordinator.request_rejoin)  # faust_internals.rejoin


class _Stopping:
    """Just what ``Consumer.wait_empty`` reads of a consumer that is stopping."""

    should_stop = False

    def __init__(self, messages: list) -> None:
        from weakref import WeakSet

        self._unacked_messages = WeakSet(messages)
        self.waited = 0
        self.diag = type("Diag", (), {"set_flag": lambda *_: None, "unset_flag": lambda *_: None})()
        self.log = type("Log", (), {"dev": lambda *_: None, "warning": lambda *_: None, "info": lambda *_: None})()

    async def commit(self, *_: object, **__: object) -> None: ...

    async def commit_and_end_transactions(self) -> None: ...

    async def _wait_for_ack(self, timeout: float) -> None:
        self.waited += 1

    def _clean_unacked_messages(self) -> None:
        from faust.transport.consumer import Consumer

        Consumer._clean_unacked_messages(self)


def test_a_stop_does_not_wait_for_acks_already_made() -> None:
    """Patch 14: messages acknowledged but left in the unacked set do not hold the stop for a second;
    one still unacknowledged is waited for, as faust does."""
    import asyncio

    from faust.transport.consumer import Consumer

    faust_internals.install()

    class Msg:
        def __init__(self, acked: bool) -> None:
            self.acked = acked

    done = [Msg(True), Msg(True)]
    consumer = _Stopping(done)
    asyncio.run(Consumer.wait_empty(consumer))
    assert consumer.waited == 0 and not consumer._unacked_messages

    pending = Msg(False)
    consumer = _Stopping([pending])

    async def _wait_for_ack(timeout: float) -> None:
        consumer.waited += 1
        pending.acked = True

    consumer._wait_for_ack = _wait_for_ack
    asyncio.run(Consumer.wait_empty(consumer))
    assert consumer.waited == 1


def test_a_stopping_worker_closes_its_loop_after_a_tenth_of_a_second_not_a_second() -> None:
    import asyncio

    app = faust.App(f"t-{id(object())}", broker="kafka://127.0.0.1:9", store="memory://")
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, loop=asyncio.new_event_loop())
    try:
        with pytest.raises(asyncio.TimeoutError):  # mode's own: a 1 s sleep
            worker.loop.run_until_complete(asyncio.wait_for(worker._sentinel_task(), 0.5))
        faust_internals.quick_loop_close(worker)
        worker.loop.run_until_complete(asyncio.wait_for(worker._sentinel_task(), 0.5))
    finally:
        worker.loop.close()


def test_a_starting_worker_registers_its_tables_changelogs_without_a_second_of_sleep() -> None:
    """Patch 15: faust's table manager slept 1 s at start before it registered the changelogs."""
    import asyncio

    from faust.tables.manager import TableManager

    faust_internals.install()
    steps: list[str] = []

    class Starting:
        should_stop = False
        sleep = staticmethod(asyncio.sleep)  # faust's own first line: ``await self.sleep(1.0)``

        async def _update_channels(self) -> None:
            steps.append("changelogs registered")

        class recovery:  # noqa: N801 - stands for the manager's Recovery service
            @staticmethod
            async def start() -> None:
                steps.append("recovery started")

    asyncio.run(asyncio.wait_for(TableManager.on_start(Starting()), 0.5))
    assert steps == ["changelogs registered", "recovery started"]


def test_a_transactions_commit_is_noted_where_fausts_event_path_check_reads_it() -> None:
    """faust's event-path check logged "Has not committed TP(...) at all since worker start" at ERROR for
    busy partitions (an outside trial): the commits are the transactions', so note_committed records their
    time in the consumer thread's tp_last_committed_at too."""
    import time

    from faust.types import TP

    app = faust.App("t-note-committed", broker="kafka://127.0.0.1:1", store="memory://")
    before = time.monotonic()
    faust_internals.note_committed(app, "learn.loss", 3, 17)
    tp = TP("learn.loss", 3)
    assert app.consumer._committed_offset[tp] == 17
    assert app.consumer._thread.tp_last_committed_at[tp] >= before
