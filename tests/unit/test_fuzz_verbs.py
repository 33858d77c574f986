"""Property-based fuzzing of every verb (Hypothesis): hostile bodies get a clean answer.

Each verb starts from a valid body (so generated values reach deep into the verb, past the first
check) and Hypothesis replaces or adds fields with hostile values: integers far outside int64,
2^53 + 1, NaN and infinities, wrong types, long strings, nested containers. Whatever it sends,
``LearnSession.dispatch`` — the same ``run_verb`` the stream and HTTP use — must answer
``{ok: true, data}`` or ``{ok: false, error: str}``: no exception escapes, the process does not
crash, and the state of another session is byte for byte what it was.

The example count is bounded for CI (``_EXAMPLES``); raise it locally with
``LEARNSTREAM_FUZZ_EXAMPLES=20000 pytest tests/unit/test_fuzz_verbs.py``.
"""
from __future__ import annotations

import base64
import copy
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from workers.verbs.surface import BLOB_TABLES, REGISTRY
from workers.verbs.session import LearnSession
from workers.state.access import state_key
from workers.verbs.checks import EMB, VALID_BODIES

_EXAMPLES = int(os.environ.get("LEARNSTREAM_FUZZ_EXAMPLES", "400"))

# A valid body of every verb (shared with the state parts' check suite); the fuzzer mutates these.
BASE = VALID_BODIES
# Fields worth hitting in any verb (numeric ranges above all).
FIELDS = sorted({k for b in BASE.values() for k in b} | {
    "dim", "in_dim", "heads", "head_dim", "hidden", "capacity", "now_ms", "t", "known_at", "limit", "k", "top_k",
    "count", "window", "seed", "n_features", "n_classes", "batch_size", "epsilon", "threshold", "lr", "momentum",
    "ewc_lambda", "token_budget", "estimated_tokens", "invalid_at", "expired_at", "valid_at", "older_than_days",
    "message_index", "max_age_ms", "max_per_run", "finetune_count", "timeout_s", "embedding_b64", "events",
    "examples", "replay", "drift_window", "fisher_every", "consolidation_steps", "train_steps", "ts"})

HUGE_INTS = [2**63, 2**63 - 1, -(2**63) - 1, 2**64 - 1, 2**64, 2**53 + 1, 9007199254740993, 10**30, 10**400, -(10**400), -1, 0]
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"),
                                                                    1e308, -1e308, 5e-324]),
    st.booleans(), st.none(), st.text(max_size=40),
    st.sampled_from(["x" * 100_000, "\x1f", "a\x00b", "tenant-b", "e1", "o1", "m1", "c1", "a"]),
    st.just(base64.b64encode(np.full(4, np.nan, "<f4").tobytes()).decode()),
    st.just(base64.b64encode(b"\x00" * 7).decode()),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                       st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
                      max_leaves=12)
hostile_body = st.tuples(st.sampled_from(sorted(BASE)), st.dictionaries(st.sampled_from(FIELDS), values, min_size=1,
                                                                        max_size=4),
                         st.lists(st.sampled_from(FIELDS), max_size=2))


def _setup(s: LearnSession, sk: str) -> None:
    """Every kind of state a session can hold, so reads reach their kernels."""
    for name in ("init_instant", "feedback", "init_attention", "init_router", "record_outcome", "insert_edge",
                 "init_learner", "learn_example", "learn_outcome", "add_preference", "add_knowledge",
                 "score_conversation", "record_loss", "consolidate"):
        out = s.dispatch({"verb": name, "body": {**BASE[name], "session_key": sk}})
        assert out["ok"], (name, out)


def _snapshot(s: LearnSession, sk: str) -> dict[bytes, bytes]:
    keys = [state_key(t, sk) for t in BLOB_TABLES]
    snap = {k: s.store.get(k) for k in keys}
    snap.update(s.store.iter_prefix(state_key("graph", sk)))
    return snap


@pytest.fixture(scope="module")
def fuzz_session():
    s = LearnSession()
    _setup(s, "victim")
    _setup(s, "fuzz")
    yield s
    s.close()


def test_every_verb_has_a_base_body() -> None:
    assert set(BASE) == set(REGISTRY), set(REGISTRY) ^ set(BASE)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=hostile_body)
def test_hostile_bodies_get_a_clean_answer(fuzz_session, case) -> None:
    name, mutation, dropped = case
    body = {**BASE[name], **mutation}
    for k in dropped:
        body.pop(k, None)
    body["session_key"] = "fuzz"
    before = _snapshot(fuzz_session, "victim")
    out = fuzz_session.dispatch({"verb": name, "body": body})  # an exception escaping fails the test
    assert isinstance(out, dict) and out.get("verb") == name and isinstance(out.get("ok"), bool), out
    if not out["ok"]:
        assert isinstance(out.get("error"), str) and out["error"], out
    assert _snapshot(fuzz_session, "victim") == before, f"{name} changed another session"


@pytest.mark.parametrize("name,body,words", [
    ("init_router", {"targets": ["a", "b"], "in_dim": 18446744073709551615}, "in_dim"),
    ("init_instant", {"targets": ["a"], "dim": 9007199254740993}, "dim"),
    ("feedback", {"embedding": EMB, "model": "a", "quality": 0.5, "now_ms": 2**64}, "now_ms"),
    ("init_attention", {"dim": 4, "heads": 2**40}, "heads"),
    ("init_learner", {"n_features": 3, "n_classes": 2, "hidden": 2**31}, "hidden"),
])
def test_the_reported_crashes_are_validation_errors(name: str, body: dict, words: str) -> None:
    s = LearnSession()
    if name == "feedback":
        s.dispatch({"verb": "init_instant", "body": {"targets": ["a"], "dim": 4}})
    out = s.dispatch({"verb": name, "body": body})
    assert not out["ok"] and words in out["error"], out


def _leaf_paths(obj, kinds: tuple, path=()):
    """The path of every leaf of ``kinds`` (bools never) in a body, the first two items of each list."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, kinds, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield from _leaf_paths(v, kinds, path + (i,))
    elif isinstance(obj, kinds) and not isinstance(obj, bool):
        yield path


def _with(body: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(body)
    at = out
    for p in path[:-1]:
        at = at[p]
    at[path[-1]] = value
    return out


# every number of every verb's valid body, each alone: deterministic where the fuzzer above only samples
_NUMBER_CASES = [(name, path) for name in sorted(BASE) for path in _leaf_paths(BASE[name], (int, float))]
_STRING_CASES = [(name, path) for name in sorted(BASE) for path in [*_leaf_paths(BASE[name], (str,)), ("session_key",)]]


@pytest.mark.parametrize("big", [10**400, -(10**400)], ids=["+10**400", "-10**400"])
def test_an_integer_beyond_the_float_range_gets_a_clean_answer_anywhere(fuzz_session, big: int) -> None:
    """A parser that keeps integers exact (the stdlib's, MCP's, an in-process dict) hands a verb
    ``10**400``: ``float()``, ``math.isfinite`` and ``np.asarray`` raise OverflowError on it. Every
    number of every verb's body, replaced by it, gets an answer, as an infinity there would."""
    assert len(_NUMBER_CASES) > 60
    before = _snapshot(fuzz_session, "victim")
    for name, path in _NUMBER_CASES:
        body = _with({**BASE[name], "session_key": "fuzz"}, path, big)
        out = fuzz_session.dispatch({"verb": name, "body": body})  # an exception escaping fails the test
        assert isinstance(out, dict) and out.get("verb") == name and isinstance(out.get("ok"), bool), (name, path, out)
    assert _snapshot(fuzz_session, "victim") == before


def test_a_huge_integer_in_an_embedding_is_refused_as_non_finite() -> None:
    s = LearnSession()
    s.dispatch({"verb": "init_instant", "body": {"targets": ["a"], "dim": 4}})
    for value in (10**400, 1e39):  # beyond a double; a double beyond float32
        out = s.dispatch({"verb": "feedback", "body": {"embedding": [value, 0, 0, 0], "model": "a", "quality": 0.5}})
        assert not out["ok"] and "embedding" in out["error"] and "finite" in out["error"], out
    out = s.dispatch({"verb": "feedback", "body": {"embedding": [1, 0, 0, 0], "model": "a", "quality": 10**400}})
    assert out == {"ok": False, "verb": "feedback", "error": "quality must be 0..1"}


def test_a_lone_surrogate_anywhere_is_refused_up_front(fuzz_session) -> None:
    """JSON cannot carry a lone surrogate, a Python string can (``errors="surrogateescape"``): a verb met
    it only when it encoded a key or stored the string, after the session had changed, and the exception
    escaped ``dispatch`` with the changed session still cached. Every string of every verb's body (and
    the session key), replaced by one, is refused before anything runs, and the session still works."""
    assert len(_STRING_CASES) > 60
    before = _snapshot(fuzz_session, "fuzz")
    for name, path in _STRING_CASES:
        body = _with({**BASE[name], "session_key": "fuzz"}, path, "x\ud800")
        out = fuzz_session.dispatch({"verb": name, "body": body})
        assert out["ok"] is False and out["error"].startswith("parse: the body is not JSON"), (name, path, out)
    assert _snapshot(fuzz_session, "fuzz") == before
    out = fuzz_session.dispatch({"verb": "add_knowledge", "body": {**BASE["add_knowledge"], "session_key": "fuzz"}})
    assert out["ok"], out


def test_numpy_values_in_process_are_taken_as_json_carries_them() -> None:
    """In Python an embedding is naturally an array and a size a ``np.int64``; a worker only ever sees
    their JSON. In process they were refused ("must be an array of numbers", "dim must be a positive
    integer"); now the same request gives the same state as its JSON form, byte for byte."""
    plain, typed = LearnSession(), LearnSession()
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    steps = [("init_instant", {"targets": ["a", "b"], "dim": 8}, {"targets": ["a", "b"], "dim": np.int64(8)}),
             ("feedback", {"embedding": x.tolist(), "model": "b", "quality": 0.75, "now_ms": 5},
              {"embedding": x, "model": "b", "quality": np.float32(0.75), "now_ms": np.int64(5)}),
             ("feedback", {"embedding": x.tolist(), "model": "a", "quality": 0.25},
              {"embedding": list(x), "model": "a", "quality": np.float64(0.25)})]
    for verb, as_json, as_numpy in steps:
        a = plain.dispatch({"verb": verb, "body": {**as_json, "session_key": "s"}})
        b = typed.dispatch({"verb": verb, "body": {**as_numpy, "session_key": "s"}})
        assert a["ok"] and a == b, (verb, a, b)
    info = [s.dispatch({"verb": "session_info", "body": {"session_key": "s"}})["data"]["digest"] for s in (plain, typed)]
    assert info[0] == info[1]


def _as_json_before(body: dict) -> tuple[dict, str | None]:
    """``_as_json`` written plainly, the whole body out with orjson first: the reference. A body holding a
    NaN or an infinity skips orjson's NumPy path, which would write them as null."""
    import json

    import orjson

    from workers.verbs.codec import json_default

    def non_finite(v: object) -> bool:
        if isinstance(v, dict):
            return any(non_finite(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return any(non_finite(x) for x in v)
        if isinstance(v, (float, np.floating, np.ndarray)):
            return not np.isfinite(v).all()
        return False

    try:
        orjson.dumps(body)
        return body, None
    except orjson.JSONEncodeError:
        pass
    if not non_finite(body):
        try:
            return orjson.loads(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)), None
        except orjson.JSONEncodeError:
            pass
    try:
        text = json.dumps(body, ensure_ascii=False, default=json_default)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        return body, str(exc)
    return json.loads(text), None


def _typed(v: object) -> object:
    """``v`` with each value's type beside it (1 and 1.0 and np.float64(1.0) differ)."""
    if isinstance(v, dict):
        return ("dict", [(_typed(k), _typed(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_typed(x) for x in v])
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.tolist())
    return (type(v).__name__, repr(v))


_LEAF = st.one_of(st.floats(), st.integers(), st.sampled_from([2 ** 64, -(2 ** 63) - 1, 2 ** 64 - 1]), st.booleans(),
                  st.none(), st.text(max_size=3), st.just("x\ud800"), st.floats().map(np.float64),
                  st.integers(-5, 5).map(np.int64))
_NUMBERS = st.lists(st.one_of(st.floats(), st.integers(), st.sampled_from([2 ** 64, 2 ** 64 - 1, -(2 ** 63) - 1]),
                              st.floats().map(np.float64)), max_size=6)
_VALUE = st.recursive(st.one_of(_LEAF, _NUMBERS), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=2), st.just("k\udc80"), st.integers(0, 2)),
                                                 inner, max_size=3)), max_leaves=12)


@given(st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 2)), _VALUE, max_size=4))
@example({"embedding": [0.5, 2 ** 64]})             # one int past orjson's range: through json, kept as it is
@example({"embedding": [0.5, np.float64(0.25)]})    # a NumPy scalar: a plain float afterwards
@example({1: [0.5, 1.0]})                           # a key JSON makes a string
@example({"k\udc80": [0.5]})                        # a key JSON cannot carry: refused
@example({"events": [{"embedding": [1.0, np.float64(2.0)]}]})
def test_the_in_process_json_check_is_unchanged_by_eliding_number_arrays(body: dict) -> None:
    """``LearnSession`` checks a body by writing it out with orjson, now without the arrays of plain numbers
    (``_numbers_elided``): the outcome, and the body a verb gets, with every value's type, are those of
    writing all of it out."""
    from workers.verbs.session import _as_json

    got, want = _as_json(body), _as_json_before(body)
    assert (got[1] is None) == (want[1] is None)
    if want[1] is None:
        assert _typed(got[0]) == _typed(want[0])


def test_in_process_a_nan_beside_numpy_values_is_refused_as_beside_plain_ones() -> None:
    """A body holding a NumPy value took orjson's NumPy path, which writes NaN and infinities as null: a NaN
    quality beside a NumPy embedding read as a missing quality ("payload.quality required"), a NaN
    ``np.float64`` dim as no dim (384). Now each is answered as the same body of plain Python values."""
    def run(numpy: bool) -> list[dict]:
        s = LearnSession()
        x = np.ones(4, np.float32) if numpy else [1.0] * 4
        f = np.float64 if numpy else float
        s.dispatch({"verb": "init_instant", "body": {"targets": ["a"], "dim": 4}})
        s.dispatch({"verb": "init_router", "body": {"targets": ["a", "b"], "in_dim": 4}})
        return [s.dispatch({"verb": verb, "body": body}) for verb, body in (
            ("feedback", {"embedding": x, "model": "a", "quality": float("nan")}),
            ("feedback", {"embedding": x, "model": "a", "quality": 0.9, "now_ms": f("inf")}),
            ("init_instant", {"targets": ["a"], "dim": f("nan"), "session_key": "z"}),
            ("record_outcome", {"target": "a", "quality": 0.5, "cost": f("nan"), "embedding": x}),
            ("record_loss", {"loss": f("nan"), "now_ms": np.int64(5) if numpy else 5}),
            ("apply_adapter", {"embedding": np.array([1.0, np.nan, 0, 0]) if numpy else [1.0, float("nan"), 0, 0]}))]

    plain, numpy = run(False), run(True)
    assert plain == numpy
    assert plain[0]["error"] == "quality must be 0..1" and plain[2]["ok"] is False


def test_in_process_a_body_nested_too_deep_or_holding_itself_is_refused_not_raised() -> None:
    s = LearnSession()
    v: list = []
    for _ in range(5000):
        v = [v]
    out = s.dispatch({"verb": "record_loss", "body": {"loss": 0.5, "x": v}})
    assert out["ok"] is False and out["error"].startswith("parse: the body is not JSON (maximum recursion depth")
    c: dict = {}
    c["c"] = c
    out = s.dispatch({"verb": "record_loss", "body": {"loss": 0.5, "x": c}})
    assert out == {"ok": False, "verb": "record_loss", "error": "parse: the body is not JSON (Circular reference detected)"}
