"""Benchmark: the temporal core's edge store on disk (``learnstream bench graph``).

One worker's store (a RocksDictStore in a temporary directory) holds ``--edges``
bi-temporal edges spread over ``--sources`` sources in one session. Measured in
one run: bulk ingest rate (``EdgeStore.insert_many``, one write batch per chunk),
the ``insert_edge`` verb one event at a time, ``query_at`` latency through the
core and through the verb (p50/p99), and the same queries answered by a full
scan of the session's edges, for the speed-up the source index buys. RSS and
on-disk size are reported after the load.

Target (issue 4): at 1,000,000 edges, query_at p99 <= 1 ms and >= 100x faster than the full scan.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from workers.cores.temporal import EdgeStore
from workers.verbs.session import LearnSession
from workers.state.access import state_key
from workers.state import RocksDictStore

__all__ = ("main",)

logger = logging.getLogger(__name__)

_T0 = 1_700_000_000_000  # epoch ms the synthetic timeline starts at
_SPAN_MS = 365 * 24 * 3600 * 1000  # one year of facts
_INVALID_SHARE = 0.3  # share of edges inserted already closed
_RELATIONS = ("works_at", "knows", "mentions", "located_in", "owns")
_TARGET_P99_MS = 1.0
_TARGET_RATIO = 100.0


def _edges(n: int, sources: int, seed: int) -> Iterator[dict]:
    """Deterministic synthetic edges: uniform sources, created in id order, some already closed."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, sources, n)
    dst = rng.integers(0, 10 * sources, n)
    lag = rng.integers(0, 30 * 24 * 3600 * 1000, n)  # facts are recorded up to 30 days after they hold
    dur = rng.integers(3600 * 1000, 90 * 24 * 3600 * 1000, n)
    closed = rng.random(n) < _INVALID_SHARE
    weight = rng.random(n)
    step = _SPAN_MS // max(n, 1)
    for i in range(n):
        created = _T0 + i * step
        valid = created - int(lag[i])
        e = {"id": f"e{i}", "src": f"src{src[i]}", "dst": f"node{dst[i]}", "relation": _RELATIONS[i % 5],
             "weight": round(float(weight[i]), 3), "created_at": created, "valid_at": valid}
        if closed[i]:
            e["invalid_at"] = valid + int(dur[i])
        yield e


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1e3


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _trimmed_rss(proc: psutil.Process) -> int | None:
    """RSS after glibc hands freed heap back (RocksDB's write path leaves much of it cached)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        return None
    return proc.memory_info().rss


def _row(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<44} {value:>16}  {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench graph", description=__doc__.split("\n\n")[0])
    p.add_argument("--edges", type=int, default=1_000_000, help="edges to load (default 1,000,000)")
    p.add_argument("--sources", type=int, default=10_000, help="distinct sources (default 10,000)")
    p.add_argument("--queries", type=int, default=5_000, help="query_at calls timed (default 5,000)")
    p.add_argument("--scan-queries", type=int, default=3, help="queries answered by full scan (default 3)")
    p.add_argument("--verb-inserts", type=int, default=5_000, help="insert_edge verb calls timed (default 5,000)")
    p.add_argument("--chunk", type=int, default=20_000, help="edges per write batch in the bulk load")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--path", type=Path, default=None, help="database directory (default: a temporary one, removed)")
    args = p.parse_args(argv)

    tmp = args.path is None
    path = Path(tempfile.mkdtemp(prefix="learnstream-bench-graph-")) if tmp else args.path
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    store = RocksDictStore(path / "db")
    try:
        session = LearnSession(store=store)
        graph = EdgeStore(store, state_key("graph", "default"))

        print(f"learnstream bench graph: {args.edges:,} edges over {args.sources:,} sources, "
              f"one session, RocksDictStore at {path}")
        t = time.perf_counter()
        n = graph.insert_many(tqdm(_edges(args.edges, args.sources, args.seed), total=args.edges, unit="edge",
                                   desc="bulk load", file=sys.stderr, mininterval=1.0), chunk=args.chunk)
        load_s = time.perf_counter() - t
        rss_loaded = proc.memory_info().rss

        # the insert_edge verb, one event at a time, into the loaded store (new ids, random sources)
        extra = list(_edges(args.verb_inserts, args.sources, args.seed + 1))
        for e in extra:
            e["id"] = "v" + e["id"]
        t = time.perf_counter()
        for e in extra:
            session.dispatch({"verb": "insert_edge", "body": {"edge": e}})
        verb_ins_s = time.perf_counter() - t

        rng = np.random.default_rng(args.seed + 2)
        qsrc = [f"src{s}" for s in rng.integers(0, args.sources, args.queries)]
        qt = [int(x) for x in rng.integers(_T0 - 30 * 24 * 3600 * 1000, _T0 + _SPAN_MS, args.queries)]

        def timed(fn) -> tuple[list[float], int]:
            lat, hits = [], 0
            for s, tq in zip(qsrc, qt):
                t0 = time.perf_counter()
                hits += fn(s, tq)
                lat.append(time.perf_counter() - t0)
            return lat, hits

        for s, tq in zip(qsrc[:500], qt[:500]):  # warm the block cache once, so every row sees the same
            graph.query_at(s, tq)
        core_lat, hits = timed(lambda s, tq: len(graph.query_at(s, tq)))
        lim_lat, _ = timed(lambda s, tq: len(graph.query_at(s, tq, limit=10)))
        verb_lat, _ = timed(lambda s, tq: session.dispatch({"verb": "query_at", "body": {"src": s, "t": tq}})
                            ["data"]["count"])
        scan_lat = []
        for s, tq in list(zip(qsrc, qt))[:args.scan_queries]:
            t0 = time.perf_counter()
            full = graph.scan_query_at(s, tq)
            scan_lat.append(time.perf_counter() - t0)
            if [e["id"] for e in full] != [e["id"] for e in graph.query_at(s, tq)]:
                print(f"MISMATCH: index and full scan disagree for {s} at {tq}", file=sys.stderr)
                return 1
        rss_end = proc.memory_info().rss
        rss_live = _trimmed_rss(proc)
        disk = _dir_bytes(path)

        per_src = (n + args.verb_inserts) / args.sources
        p99 = _pct(verb_lat, 99)
        ratio = statistics.median(scan_lat) / statistics.median(verb_lat) if scan_lat else float("nan")
        print(f"\n  {'measure':<44} {'value':>16}")
        _row("bulk load (insert_many, write batches)", f"{n / load_s:,.0f} edges/s",
             f"{n:,} edges in {load_s:.1f} s, chunk {args.chunk:,}")
        _row("insert_edge verb, one at a time", f"{args.verb_inserts / verb_ins_s:,.0f} edges/s",
             f"{args.verb_inserts:,} events into the loaded store")
        _row("query_at core p50 / p99", f"{_pct(core_lat, 50):.3f} / {_pct(core_lat, 99):.3f} ms",
             f"~{per_src:.0f} edges per source, {hits / args.queries:.1f} active per answer")
        _row("query_at core limit=10 p50 / p99", f"{_pct(lim_lat, 50):.3f} / {_pct(lim_lat, 99):.3f} ms")
        _row("query_at verb (dispatch) p50 / p99", f"{_pct(verb_lat, 50):.3f} / {p99:.3f} ms",
             f"{args.queries:,} queries, random source and t")
        if scan_lat:
            _row("full scan of the session p50", f"{statistics.median(scan_lat) * 1e3:,.0f} ms",
                 f"{len(scan_lat)} queries, same answers")
            _row("index speed-up over full scan (p50)", f"{ratio:,.0f}x")
        _row("RSS after load / at end", f"{rss_loaded / 2**20:,.0f} / {rss_end / 2**20:,.0f} MiB",
             f"{rss0 / 2**20:,.0f} MiB before the load")
        if rss_live is not None:
            _row("RSS at end after malloc_trim", f"{rss_live / 2**20:,.0f} MiB", "the live working set")
        _row("database on disk", f"{disk / 2**20:,.0f} MiB")
        ok_p99, ok_ratio = p99 <= _TARGET_P99_MS, ratio >= _TARGET_RATIO
        print(f"\n  target p99 <= {_TARGET_P99_MS} ms: {'met' if ok_p99 else 'MISSED'} ({p99:.3f} ms); "
              f"target >= {_TARGET_RATIO:.0f}x full scan: {'met' if ok_ratio else 'MISSED'} ({ratio:,.0f}x)")
        return 0
    finally:
        store.close()
        if tmp:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
