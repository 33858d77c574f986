"""Benchmark: the CPU of a one-event save against the session's replay fill (``learnstream bench save``).

Agents platforms touch most sessions one event at a time, and a session soon holds a full
replay buffer (64 rows, ~100 kB at 384-d). The changelog writes of such an event are O(change)
(the hot piece, one replay row, the head: ``workers/state/layout.py``); this measures whether
its CPU is too. In process, one ``learn_feedback`` event per call through
``LearnSession.dispatch`` (in-memory store, ``embedding_b64`` bodies) over ``--sessions``
sessions whose replay buffers hold ``--rows`` rows each, and the same with the instant core's
tracking of what changed switched off (``InstantState.changed_since`` answering "unknown": the
save builds the whole core and compares every piece, as before 2026-12-02), interleaved,
``--repeats`` times each; the median of each is printed, µs per event of this process's CPU time.
With it on, a save builds and compares only the hot piece and the pushed row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stream import machine_note  # noqa: E402
from workers.cores import instant  # noqa: E402
from workers.verbs.codec import encode_embedding_b64  # noqa: E402
from workers.verbs.session import LearnSession  # noqa: E402

__all__ = ("main",)

_TARGETS = ["small", "medium", "large"]


def _event(rng: np.random.Generator, dim: int) -> dict:
    return {"embedding_b64": encode_embedding_b64(rng.standard_normal(dim).astype(np.float32)),
            "model": _TARGETS[int(rng.integers(0, len(_TARGETS)))], "quality": float(0.55 + 0.45 * rng.random())}


def one_event_calls(sessions: int, rows: int, events: int, dim: int, seed: int, tracked: bool) -> float:
    """CPU µs per event of one-event ``learn_feedback`` calls on sessions holding ``rows`` replay rows."""
    rng = np.random.default_rng(seed)
    s = LearnSession()
    keys = [f"s-{i}" for i in range(sessions)]
    for k in keys:
        s.dispatch({"verb": "init_instant", "body": {"session_key": k, "targets": _TARGETS, "dim": dim}})
        if rows:  # qualities away from 0.5: every event pushes a row
            s.dispatch({"verb": "learn_feedback", "body": {"session_key": k,
                                                           "events": [_event(rng, dim) for _ in range(rows)]}})
    calls = [{"verb": "learn_feedback", "body": {"session_key": keys[i % sessions], "events": [_event(rng, dim)]}}
             for i in range(events)]
    saved = instant.InstantState.changed_since
    if not tracked:
        instant.InstantState.changed_since = lambda self, stored: None  # type: ignore[method-assign]
    try:
        t0 = time.process_time()
        for c in calls:
            out = s.dispatch(c)
            if not out["ok"]:
                raise RuntimeError(out)
        return 1e6 * (time.process_time() - t0) / events
    finally:
        instant.InstantState.changed_since = saved  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench save", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--rows", default="2,16,64", help="replay rows per session before timing (comma-separated)")
    p.add_argument("--events", type=int, default=5_000, help="timed one-event calls per measurement")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"learnstream bench save: {args.dim}-d, {args.sessions} sessions, {args.events:,} one-event learn_feedback "
          f"calls per measurement, {args.repeats} of each, interleaved")
    print(f"machine: {machine_note()}", flush=True)
    print(f"{'replay rows':>11} {'changed pieces (default)':>24} {'whole core':>11} {'changed / whole':>16}   (CPU µs per event, median)")
    for rows in (int(r) for r in args.rows.split(",")):
        got: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.repeats):
            for tracked in ((True, False) if r % 2 == 0 else (False, True)):
                got[tracked].append(one_event_calls(args.sessions, rows, args.events, args.dim, args.seed + r, tracked))
        on, off = statistics.median(got[True]), statistics.median(got[False])
        print(f"{rows:>11} {on:>24,.1f} {off:>11,.1f} {on / off:>16.0%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
