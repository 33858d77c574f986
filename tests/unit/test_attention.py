"""Attention core: kernel vs NumPy reference, the spec's rules and error strings, verbs, state bytes."""
from __future__ import annotations

import numpy as np
import pytest
from reference import attention_ref as ref

from workers import _kernels
from workers.cores.attention import AttentionState, relation_index
from workers.verbs.session import LearnSession
from workers.errors import CorruptStateError

DIM, HEADS, HEAD_DIM, SEED = 64, 4, 16, 7


def emb(seed: int, dim: int = DIM) -> list[float]:
    """The reference crate's test embedding: ((i + seed) mod 256) / 255 - 0.5."""
    return [((i + seed) % 256) / 255.0 - 0.5 for i in range(dim)]


def rich_subgraph() -> dict:
    """Known, suffixed, unknown and missing relations; a node without edge; skipped nodes."""
    return {
        "nodes": [
            {"id": "n1", "embedding": emb(2), "created_at": 1000},
            {"id": "n2", "embedding": emb(3), "created_at": 2_000_000_000},
            {"id": "n3", "embedding": emb(40), "created_at": 4000},
            {"id": "bad", "embedding": emb(5, 32), "created_at": 0},
            {"id": "none"},
            {"id": "n4", "embedding": emb(90)},
            {"id": "n5", "embedding": emb(120), "created_at": 7000},
        ],
        "edges": [
            {"src": "q", "dst": "n1", "relation": "entity", "weight": 1.0},
            {"src": "q", "dst": "n2", "relation": "mention-L2", "weight": 0.5},
            {"src": "q", "dst": "n1", "relation": "saga", "weight": 9.0},  # not the first edge into n1
            {"src": "q", "dst": "n3", "relation": "works_at"},
            {"src": "q", "dst": "n4"},
        ],
    }


@pytest.mark.parametrize("seed", [0, 1, 42, 0xC0A5, 0xFFFFFFFF])
def test_mulberry32_is_bit_exact_with_pure_python(seed: int) -> None:
    got = _kernels.mulberry32_stream(seed, 2000)
    want = ref.mulberry32(seed, 2000)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_init_draws_every_matrix_bit_exactly_in_spec_order() -> None:
    k = _kernels.GraphAttention(DIM, HEADS, HEAD_DIM, SEED)
    want = ref.init_weights(DIM, HEADS, HEAD_DIM, SEED)
    for name, m in k.matrices().items():
        assert m.shape == want[name].shape, name
        assert np.array_equal(m.view(np.uint32), want[name].view(np.uint32)), name
    assert np.array_equal(k.initial_we(), want["we"])


def test_default_head_dim_is_dim_over_heads() -> None:
    k = _kernels.GraphAttention(64)
    assert (k.heads, k.head_dim, k.seed) == (8, 8, 42)


def test_kernel_equals_numpy_reference() -> None:
    state = AttentionState(DIM, HEADS, HEAD_DIM, SEED)
    sub = rich_subgraph()
    for now in (0, 5000, 3_000_000_000):
        got = state.attend(np.asarray(emb(1), dtype=np.float32), sub, now)
        want_v, want_w = ref.attend(ref.init_weights(DIM, HEADS, HEAD_DIM, SEED), emb(1), sub, now)
        np.testing.assert_allclose(got["vector"], want_v, atol=1e-5)
        np.testing.assert_allclose(got["weights"], want_w, atol=1e-5)
        assert got["n_nodes"] == len(sub["nodes"])


def test_kernel_equals_reference_after_nudges() -> None:
    state = AttentionState(DIM, HEADS, HEAD_DIM, SEED)
    w = ref.init_weights(DIM, HEADS, HEAD_DIM, SEED)
    for rel, sq in [("entity", 1.0), ("mention-L3", -0.4), ("entity", 7.0), ("saga", -3.0)]:
        assert state.nudge_relation(rel, sq)
        ref.nudge(w, rel, sq)
    assert np.array_equal(state.we, w["we"])
    got = state.attend(np.asarray(emb(1), dtype=np.float32), rich_subgraph(), 5000)
    want_v, want_w = ref.attend(w, emb(1), rich_subgraph(), 5000)
    np.testing.assert_allclose(got["vector"], want_v, atol=1e-5)
    np.testing.assert_allclose(got["weights"], want_w, atol=1e-5)


def test_weights_sum_to_one_per_head() -> None:
    out = AttentionState(DIM, HEADS, HEAD_DIM, SEED).attend(
        np.asarray(emb(1), dtype=np.float32), rich_subgraph(), 5000)
    w = np.asarray(out["weights"])
    assert w.shape == (HEADS, 5)  # 7 nodes, 2 skipped
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    assert (w > 0).all()


def test_nodes_with_wrong_dimension_are_skipped() -> None:
    sub = {"nodes": [{"id": "ok", "embedding": emb(2)}, {"id": "bad", "embedding": emb(3, 32)},
                     {"id": "none", "embedding": None}], "edges": []}
    out = AttentionState(DIM, 8, 8, 1).attend(np.asarray(emb(1), dtype=np.float32), sub)
    assert [len(row) for row in out["weights"]] == [1] * 8
    assert out["weights"] == [[1.0]] * 8
    assert out["n_nodes"] == 3


def test_empty_subgraph_gives_layernorm_of_query() -> None:
    q = np.asarray(emb(3), dtype=np.float32)
    for sub in ({"nodes": [], "edges": []}, {}, {"nodes": [{"id": "x", "embedding": emb(1, 5)}]}):
        out = AttentionState(DIM, HEADS, HEAD_DIM, 13).attend(q, sub)
        assert out["weights"] == []
        np.testing.assert_allclose(out["vector"], ref.layer_norm(q), atol=1e-6)
        assert abs(np.mean(out["vector"])) < 1e-4


def test_softmax_floor_keeps_far_scores_positive() -> None:
    # a node whose key is huge along the query dominates; the others are floored at exp(-30), not 0
    state = AttentionState(DIM, 1, DIM, 3)
    q = np.asarray(emb(1), dtype=np.float32)
    wq, wk = state.kernel.matrices()["wq"], state.kernel.matrices()["wk"]
    far = np.linalg.lstsq(wk, 1e4 * (wq @ q), rcond=None)[0]
    sub = {"nodes": [{"id": "a", "embedding": far.tolist()}, {"id": "b", "embedding": (-far).tolist()}]}
    w = state.attend(q, sub)["weights"][0]
    assert w[0] == pytest.approx(1.0) and 0 < w[1] < 1e-12
    assert w[1] == pytest.approx(np.exp(np.float32(-30.0)), rel=1e-3)


def test_relation_base_is_the_part_before_L() -> None:
    assert relation_index("entity") == 1
    assert relation_index("hnsw-neighbor-L0") == 0
    assert relation_index("saga-L12") == 4
    assert relation_index("entities") is None and relation_index(None) is None


def _edge_projection_output(state: AttentionState, relation: str) -> list[float]:
    sub = {"nodes": [{"id": "a", "embedding": emb(2)}, {"id": "b", "embedding": emb(60)}],
           "edges": [{"src": "q", "dst": "a", "relation": relation}, {"src": "q", "dst": "b", "relation": "saga"}]}
    return state.attend(np.asarray(emb(1), dtype=np.float32), sub)["weights"]


def test_nudging_a_known_relation_changes_the_edge_projection() -> None:
    state = AttentionState(DIM, HEADS, HEAD_DIM, SEED)
    we0, out0 = state.we.copy(), _edge_projection_output(state, "entity")
    assert state.nudge_relation("entity", 1.0) is True
    assert not np.array_equal(state.we, we0)
    np.testing.assert_array_equal(state.we[:, 1], we0[:, 1] * np.float32(1.05))
    np.testing.assert_array_equal(np.delete(state.we, 1, axis=1), np.delete(we0, 1, axis=1))
    assert _edge_projection_output(state, "entity") != out0
    state.nudge_relation("mention", -50.0)  # clamped to -1
    np.testing.assert_array_equal(state.we[:, 2], we0[:, 2] * np.float32(0.95))


@pytest.mark.parametrize("relation,sq", [("does-not-exist", 1.0), ("entity", float("nan")),
                                         ("entity", float("inf")), ("entity", float("-inf")), ("", 0.5)])
def test_nudging_unknown_or_non_finite_is_a_no_op(relation: str, sq: float) -> None:
    state = AttentionState(DIM, HEADS, HEAD_DIM, SEED)
    we0 = state.we.copy()
    assert state.nudge_relation(relation, sq) is False
    assert np.array_equal(state.we, we0)


def test_state_bytes_hold_only_hyperparameters_and_we() -> None:
    state = AttentionState(DIM, HEADS, HEAD_DIM, SEED)
    state.nudge_relation("episode", 0.8)
    data = state.to_bytes()
    assert len(data) == 21 + HEAD_DIM * 7 * 4
    back = AttentionState.from_bytes(data)
    assert np.array_equal(back.we, state.we)
    q = np.asarray(emb(1), dtype=np.float32)
    assert back.attend(q, rich_subgraph(), 5000) == state.attend(q, rich_subgraph(), 5000)
    assert back.to_bytes() == data


@pytest.mark.parametrize("mutate", [lambda b: b[:10], lambda b: b"XXXX" + b[4:], lambda b: b[:4] + b"\x09" + b[5:],
                                    lambda b: b + b"\0\0\0\0"])
def test_corrupt_state_bytes_are_refused(mutate) -> None:
    with pytest.raises(CorruptStateError):
        AttentionState.from_bytes(mutate(AttentionState(DIM).to_bytes()))


# ---------------------------------------------------------------- verbs
def call(s: LearnSession, verb: str, body: dict | None = None) -> dict:
    return s.dispatch({"verb": verb, "body": body or {}})


def test_verbs_end_to_end() -> None:
    s = LearnSession()
    assert call(s, "health")["data"]["attention_ready"] is False
    assert call(s, "init_attention", {"dim": DIM, "heads": HEADS, "head_dim": HEAD_DIM, "seed": SEED})["data"] == \
        {"dim": DIM, "heads": HEADS, "head_dim": HEAD_DIM}
    assert call(s, "health")["data"]["attention_ready"] is True
    out = call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph(), "now_ms": 5000})
    want_v, want_w = ref.attend(ref.init_weights(DIM, HEADS, HEAD_DIM, SEED), emb(1), rich_subgraph(), 5000)
    np.testing.assert_allclose(out["data"]["vector"], want_v, atol=1e-5)
    np.testing.assert_allclose(out["data"]["weights"], want_w, atol=1e-5)
    assert out["data"]["n_nodes"] == 7
    assert call(s, "nudge_relation", {"relation": "entity-L1", "signed_quality": 0.5})["data"] == \
        {"relation": "entity-L1", "nudged": True}
    assert call(s, "nudge_relation", {"relation": "nope", "signed_quality": 0.5})["data"] == \
        {"relation": "nope", "nudged": False}
    again = call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph(), "now_ms": 5000})["data"]
    assert again["weights"] != out["data"]["weights"]


def test_default_init_and_b64_query() -> None:
    from workers.verbs.codec import encode_embedding_b64

    s = LearnSession()
    assert call(s, "init_attention", {"dim": 64})["data"] == {"dim": 64, "heads": 8, "head_dim": 8}
    q = np.asarray(emb(1), dtype=np.float32)
    a = call(s, "attend", {"query_b64": encode_embedding_b64(q), "subgraph": rich_subgraph()})["data"]
    b = call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph()})["data"]
    assert a == b
    want_v, _ = ref.attend(ref.init_weights(64, 8, 8, 42), emb(1), rich_subgraph())
    np.testing.assert_allclose(a["vector"], want_v, atol=1e-5)


def test_nudge_persists_across_reopen(tmp_path) -> None:
    s = LearnSession(path=tmp_path)
    call(s, "init_attention", {"dim": DIM, "heads": HEADS, "seed": SEED})
    call(s, "nudge_relation", {"relation": "saga", "signed_quality": 1.0})
    before = call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph()})["data"]
    s.close()
    s2 = LearnSession(path=tmp_path)
    assert call(s2, "attend", {"query": emb(1), "subgraph": rich_subgraph()})["data"] == before
    s2.close()


@pytest.mark.parametrize("body,error", [
    ({}, "dim required"),
    ({"dim": 0}, "dim/heads/head_dim must be > 0"),
    ({"dim": -8}, "dim/heads/head_dim must be > 0"),
    ({"dim": 64, "heads": 0}, "dim/heads/head_dim must be > 0"),
    ({"dim": 64, "head_dim": 0}, "dim/heads/head_dim must be > 0"),
    ({"dim": 4, "heads": 8}, "dim/heads/head_dim must be > 0"),
    ({"dim": 64, "seed": -1}, "seed must be an integer in [0, 2^32)"),
    ({"dim": 100_000}, "dim and heads*head_dim must be <= 4096"),
])
def test_init_attention_errors(body: dict, error: str) -> None:
    s = LearnSession()
    assert call(s, "init_attention", body) == {"ok": False, "verb": "init_attention", "error": error}
    assert call(s, "health")["data"]["attention_ready"] is False


def test_refused_init_keeps_the_old_state() -> None:
    s = LearnSession()
    call(s, "init_attention", {"dim": DIM})
    call(s, "nudge_relation", {"relation": "saga", "signed_quality": 1.0})
    before = call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph()})["data"]
    assert not call(s, "init_attention", {"dim": 0})["ok"]
    assert call(s, "attend", {"query": emb(1), "subgraph": rich_subgraph()})["data"] == before


@pytest.mark.parametrize("verb,body,error", [
    ("attend", {"query": emb(1), "subgraph": {}}, "attention not initialized"),
    ("nudge_relation", {"relation": "entity", "signed_quality": 1.0}, "attention not initialized"),
    ("nudge_relation", {"signed_quality": 1.0}, "relation required"),
    ("nudge_relation", {"relation": "entity"}, "signed_quality required"),
])
def test_uninitialised_and_missing_field_errors(verb: str, body: dict, error: str) -> None:
    assert call(LearnSession(), verb, body) == {"ok": False, "verb": verb, "error": error}


@pytest.mark.parametrize("body,error", [
    ({"subgraph": {}}, "query required"),
    ({"query": emb(1)}, "subgraph required"),
    ({"query": emb(1, 32), "subgraph": {}}, f"attention: query_emb must be len {DIM}"),
    ({"query": [], "subgraph": {}}, f"attention: query_emb must be len {DIM}"),
    ({"query": emb(1), "subgraph": {"nodes": "x"}}, "subgraph.nodes and subgraph.edges must be arrays"),
])
def test_attend_errors(body: dict, error: str) -> None:
    s = LearnSession()
    call(s, "init_attention", {"dim": DIM})
    assert call(s, "attend", body) == {"ok": False, "verb": "attend", "error": error}


def test_kernel_checks_shapes() -> None:
    k = _kernels.GraphAttention(DIM, HEADS, HEAD_DIM, SEED)
    q = np.zeros(DIM, dtype=np.float32)
    with pytest.raises(RuntimeError, match="query_emb must be len 64"):
        k.attend(np.zeros(3, dtype=np.float32), np.zeros((0, DIM)), np.zeros((0, 3)), k.initial_we())
    with pytest.raises(RuntimeError, match="edges must be n x 3"):
        k.attend(q, np.zeros((2, DIM)), np.zeros((1, 3)), k.initial_we())
    with pytest.raises(RuntimeError, match="we must be head_dim x 7"):
        k.attend(q, np.zeros((0, DIM)), np.zeros((0, 3)), np.zeros((3, 7)))
    with pytest.raises(RuntimeError, match="dim/heads/head_dim must be > 0"):
        _kernels.GraphAttention(0)


def test_kernel_pickles_by_seed() -> None:
    import pickle

    k = _kernels.GraphAttention(DIM, HEADS, HEAD_DIM, SEED)
    k2 = pickle.loads(pickle.dumps(k))
    assert repr(k2) == repr(k)
    for name, m in k.matrices().items():
        assert np.array_equal(m, k2.matrices()[name])


def test_many_positive_nudges_stay_bounded_and_attend_stays_finite() -> None:
    """[beyond] The spec's nudge has no bound: an outside trial's 1,832 positive nudges (the learning loop
    nudges the dominant relation on every feedback event) took the column to inf and every attend after it to
    NaN, answered as ``ok``. The column now stops at _WE_MAX (direction kept); below it each nudge is the
    spec's exact scaling."""
    from workers.cores import attention

    st = AttentionState(dim=4, heads=2)
    i = relation_index("entity")
    col0 = st.we[:, i].copy()
    for _ in range(10):
        st.nudge_relation("entity", 1.0)
    assert np.allclose(st.we[:, i], col0 * 1.05 ** 10, rtol=1e-5)
    for _ in range(3000):
        st.nudge_relation("entity", 1.0)
    col = st.we[:, i]
    assert np.isfinite(col).all() and np.abs(col).max() <= attention._WE_MAX * 1.0001
    assert np.allclose(col / np.abs(col).max(), col0 / np.abs(col0).max(), atol=1e-5)  # the same direction
    s = LearnSession()
    assert s.dispatch({"verb": "init_attention", "body": {"dim": 4, "heads": 2}})["ok"]
    for _ in range(2000):
        s.dispatch({"verb": "nudge_relation", "body": {"relation": "entity", "signed_quality": 1}})
    out = s.dispatch({"verb": "attend", "body": {"query": [1, 2, 3, 4], "subgraph": {
        "nodes": [{"id": "a", "embedding": [1, 0, 0, 0]}], "edges": [{"src": "z", "dst": "a", "relation": "entity"}]}}})
    assert out["ok"] and all(np.isfinite(out["data"]["vector"])), out


def test_a_state_that_overflowed_before_the_bound_is_refused_not_answered_as_nan() -> None:
    st = AttentionState(dim=4, heads=2)
    st.we[:, relation_index("entity")] = np.inf
    sub = {"nodes": [{"id": "a", "embedding": [1, 0, 0, 0]}], "edges": [{"src": "z", "dst": "a", "relation": "entity"}]}
    with pytest.raises(Exception, match="not finite"):
        st.attend(np.array([1, 2, 3, 4], np.float32), sub)
    st.nudge_relation("entity", 1.0)  # a nudge takes an overflowed column back to zero: finite again
    assert np.isfinite(st.attend(np.array([1, 2, 3, 4], np.float32), sub)["vector"]).all()
