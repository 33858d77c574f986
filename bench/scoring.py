"""Memory importance scoring with the built-in model: model throughput, the full matrix, and the
cost of one memory.context event (``score_conversation``) on the verb surface.

    learnstream bench scoring                       # 10 memories, 100 responses, 5 repeats
    learnstream bench scoring --memories 40 --responses 400
"""
from __future__ import annotations

import argparse
import statistics
import time

from workers.verbs.session import LearnSession
from workers.scoring.backends import BuiltinBackend, ScoreBackend
from workers.scoring.conversation import EncodedConversation, Message
from workers.scoring.modes import full_matrix
from workers.scoring.ngram import builtin_model, load_corpus

__all__ = ("main",)


class Counting(ScoreBackend):
    """The built-in backend, counting calls."""

    name = "counting"

    def __init__(self) -> None:
        self.inner = BuiltinBackend()
        self.calls = 0

    @property
    def tokenizer(self):  # noqa: ANN201
        return self.inner.tokenizer

    def _score(self, tokens: list[int], ranges: list[tuple[int, int]]) -> list[float]:
        self.calls += 1
        return self.inner._score(tokens, ranges)


def conversation(memories: int, responses: int) -> list[Message]:
    """Memories first, then user/assistant turns from the corpus (some reuse memory words)."""
    lines = load_corpus()
    conv = [Message("memory", lines[(7 * i) % len(lines)], f"m{i}") for i in range(memories)]
    for i in range(responses):
        conv.append(Message("user", lines[(3 * i) % len(lines)]))
        conv.append(Message("assistant", lines[(3 * i + 1) % len(lines)]))
    return conv


def timed(fn, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="learnstream bench scoring", description=__doc__.splitlines()[0])
    ap.add_argument("--memories", type=int, default=10)
    ap.add_argument("--responses", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    builtin_model.cache_clear()
    tok, lm = builtin_model()
    build_s = time.perf_counter() - t0
    conv = conversation(args.memories, args.responses)
    tokens, _ = EncodedConversation(conv, tok).render()

    model_s, _ = timed(lambda: lm.token_logprobs(tokens), args.repeats)
    counting = Counting()
    matrix_s, m = timed(lambda: full_matrix(conv, counting), args.repeats)
    calls = counting.calls // args.repeats
    body = {"session_key": "bench", "conversation_id": "c", "messages": [x.to_dict() for x in conv]}

    def event() -> dict:
        s = LearnSession()  # a fresh session: every memory is due
        return s.dispatch({"verb": "score_conversation", "body": {**body, "now_ms": 0}})

    event_s, out = timed(event, args.repeats)
    scored = len(out["data"]["scored"])

    rows = [
        ("model build (corpus -> Kneser-Ney counts)", f"{build_s * 1e3:,.0f} ms"),
        (f"conversation: {args.memories} memories, {args.responses} responses", f"{len(tokens):,} tokens"),
        ("built-in model, log-prob of every token", f"{len(tokens) / model_s:,.0f} tokens/s"),
        (f"full matrix ({calls} calls = N+1)", f"{matrix_s * 1e3:,.1f} ms"),
        (f"score_conversation event ({scored} memories scored, 2 calls each)", f"{event_s * 1e3:,.1f} ms"),
        ("per memory scored in that event", f"{event_s * 1e3 / max(scored, 1):,.2f} ms"),
    ]
    print(f"\nmemory importance scoring, built-in model (median of {args.repeats})")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>16}")
    assert m.values.shape == (args.memories, args.responses)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
