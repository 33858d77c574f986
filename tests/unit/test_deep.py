"""Deep core: Fisher EMA, EWC penalty, loss-window boundaries; kernels vs reference, verbs, persistence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from reference import deep_ref as ref
from workers import _kernels as K
from workers.cores.deep import BOUNDARY_Z, FISHER_DECAY, LAMBDA, MIN_STD, RING_CAP, DeepState
from workers.cores.instant import InstantState
from workers.verbs.session import LearnSession
from workers.errors import CorruptStateError, VerbError


def test_spec_constants() -> None:
    assert (FISHER_DECAY, LAMBDA, RING_CAP, BOUNDARY_Z, MIN_STD) == (0.999, 2000.0, 10, 2.5, 1e-4)


# -- Fisher EMA ------------------------------------------------------------------------
def test_fisher_ema_kernel_is_bit_exact_with_reference_and_in_place() -> None:
    rng = np.random.default_rng(1)
    F = rng.random(1000).astype(np.float32)
    g = rng.normal(size=1000).astype(np.float32)
    expect = ref.fisher_ema(F.copy(), g)
    ident = id(F)
    assert K.fisher_ema(F, g, FISHER_DECAY) is None
    assert id(F) == ident and np.array_equal(F, expect)
    K.fisher_ema(F, g, 0.5)
    assert np.array_equal(F, ref.fisher_ema(expect, g, 0.5))


def test_fisher_ema_refuses_what_it_cannot_update_in_place() -> None:
    with pytest.raises(RuntimeError, match="float32"):
        K.fisher_ema(np.zeros(3), np.zeros(3, np.float32), 0.999)
    with pytest.raises(RuntimeError, match="lengths differ"):
        K.fisher_ema(np.zeros(3, np.float32), np.zeros(4, np.float32), 0.999)


def test_fisher_grows_toward_but_stays_under_one_over_1000_steps() -> None:
    d = DeepState()
    params = np.zeros(8, np.float32)
    grads = np.ones(8, np.float32)
    prev = 0.0
    for k in range(1, 1001):
        d.consolidate("w", params, grads)
        f = float(d.fisher["w"][0])
        assert prev < f < 1.0
        prev = f
    assert prev == pytest.approx(1 - 0.999 ** 1000, rel=1e-3)  # ~0.632


# -- EWC penalty -----------------------------------------------------------------------
def test_penalty_is_exactly_zero_at_the_snapshot_and_grows_with_distance() -> None:
    rng = np.random.default_rng(2)
    d = DeepState()
    params = rng.normal(size=50).astype(np.float32)
    d.consolidate("w", params, rng.normal(size=50).astype(np.float32))
    assert d.penalty("w", params) == 0.0
    direction = rng.normal(size=50).astype(np.float32)
    pens = [d.penalty("w", params + np.float32(t) * direction) for t in (0.01, 0.1, 0.5, 1.0, 3.0)]
    assert all(a < b for a, b in zip(pens, pens[1:])) and pens[0] > 0


def test_penalty_matches_reference_over_the_shortest_length() -> None:
    rng = np.random.default_rng(3)
    d, r = DeepState(), ref.DeepRef()
    for n in (30, 45, 20):  # grows (zero padding), then shrinks (truncation)
        p, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
        assert d.consolidate("w", p, g) == r.consolidate("w", p, g) == {"param_id": "w", "fisher_len": n}
        np.testing.assert_array_equal(d.fisher["w"], r.fisher["w"])
        np.testing.assert_array_equal(d.snapshot["w"], p)
    for m in (10, 20, 35):
        theta = rng.normal(size=m).astype(np.float32)
        assert d.penalty("w", theta) == pytest.approx(r.penalty("w", theta), rel=1e-6)
    assert d.penalty("unknown", np.ones(3, np.float32)) == 0.0
    F, s, t = (rng.random(9).astype(np.float32) for _ in range(3))
    assert K.ewc_penalty(F, s, t[:7], 3.0) == pytest.approx(ref.ewc_penalty(F, s, t[:7], 3.0), rel=1e-6)


def test_consolidate_errors_in_spec_order_change_nothing() -> None:
    d = DeepState()
    d.consolidate("w", np.ones(3, np.float32), np.ones(3, np.float32))
    before = d.to_bytes()
    with pytest.raises(VerbError, match="^params/grads have non-finite values$"):
        d.consolidate("w", np.array([1, np.nan], np.float32), np.ones(3, np.float32))  # both wrong
    with pytest.raises(VerbError, match="^params/grads have non-finite values$"):
        d.consolidate("w", np.ones(3, np.float32), np.array([1, np.inf, 0], np.float32))
    with pytest.raises(VerbError, match="^consolidate: params/grads length mismatch$"):
        d.consolidate("w", np.ones(3, np.float32), np.ones(2, np.float32))
    assert d.to_bytes() == before


# -- loss window ---------------------------------------------------------------------
def test_first_three_losses_never_fire() -> None:
    d = DeepState()
    outs = [d.record_loss(v) for v in (0.1, 1e6, -1e6)]
    assert [o["boundary_fired"] for o in outs] == [False, False, False]
    assert d.boundaries == 0 and outs[-1]["samples"] == 3


def test_a_100_after_six_half_losses_fires_once() -> None:
    d = DeepState()
    for _ in range(6):
        assert d.record_loss(0.5)["boundary_fired"] is False
    out = d.record_loss(100.0)
    w = np.array([0.5] * 6 + [100.0], np.float32)
    assert out == {"boundary_fired": True, "window_mean": pytest.approx(float(w.mean()), rel=1e-6),
                   "window_stddev": pytest.approx(float(w.std()), rel=1e-5), "samples": 7,
                   "boundaries_total": 1}
    assert d.boundaries == 1


def test_ring_keeps_the_last_ten() -> None:
    d = DeepState()
    for v in range(25):
        d.record_loss(float(v))
    assert d.loss_window == [float(v) for v in range(15, 25)]
    assert d.record_loss(25.0)["samples"] == RING_CAP


def test_non_finite_loss_is_not_stored_and_never_fires() -> None:
    d = DeepState()
    for v in (1.0, 2.0, 3.0, 4.0):
        d.record_loss(v)
    for bad in (math.nan, math.inf, -math.inf):
        out = d.record_loss(bad)
        assert out["boundary_fired"] is False and out["samples"] == 4
    assert d.loss_window == [1.0, 2.0, 3.0, 4.0]


def test_loss_window_matches_reference_on_a_random_stream() -> None:
    rng = np.random.default_rng(4)
    d, r = DeepState(), ref.LossWindowRef()
    losses = rng.normal(1.0, 0.1, 500)
    losses[rng.random(500) < 0.05] *= 20  # spikes
    losses[rng.random(500) < 0.02] = np.nan
    fired = 0
    for v in losses:
        a, b = d.record_loss(float(v)), r.record(float(v))
        assert a["boundary_fired"] == b["boundary_fired"]
        assert (a["samples"], a["boundaries_total"]) == (b["samples"], b["boundaries_total"])
        assert a["window_mean"] == pytest.approx(b["window_mean"], rel=1e-5)
        assert a["window_stddev"] == pytest.approx(b["window_stddev"], rel=1e-4, abs=1e-6)
        fired += a["boundary_fired"]
    assert fired > 5


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_observe_losses_equals_observe_loss_one_by_one(chunk: int) -> None:
    """The batched loss window (one kernel call per chunk) against the per-loss call, bit for bit."""
    rng = np.random.default_rng(5)
    losses = rng.normal(1.0, 0.1, 500)
    losses[rng.random(500) < 0.05] *= 20
    losses[rng.random(500) < 0.02] = np.nan
    one, many = DeepState(), DeepState()
    expected = [(i, o) for i, v in enumerate(losses) if (o := one.observe_loss(float(v))).boundary_fired]
    got = []
    for start in range(0, 500, chunk):
        got += [(start + i, o) for i, o in many.observe_losses(losses[start:start + chunk])]
    assert got == expected and len(got) > 5
    assert one.to_bytes() == many.to_bytes()


def test_zscore_uses_the_floored_prior_std() -> None:
    d = DeepState()
    for _ in range(3):
        d.record_loss(1.0)
    o = d.observe_loss(1.0 + 2e-4)  # std 0 -> floored at 1e-4: z = 2, under 2.5
    assert not o.boundary_fired and o.z == pytest.approx(2.0, rel=1e-2)
    o = d.observe_loss(1.0 + 1e-3)
    assert o.boundary_fired


# -- persistence ---------------------------------------------------------------------
def test_bytes_round_trip_restores_identical_behaviour() -> None:
    rng = np.random.default_rng(5)
    d = DeepState(lam=123.0)
    for v in rng.random(7):
        d.record_loss(float(v))
    for k, n in (("a", 5), ("b", 0), ("c", 40)):
        d.consolidate(k, rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32))
    c = DeepState.from_bytes(d.to_bytes())
    assert c == d and c.lam == 123.0 and c.loss_window == d.loss_window
    for v in (0.4, 9.0, 0.5):
        assert c.record_loss(v) == d.record_loss(v)
    p, g = rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    assert c.consolidate("c", p, g) == d.consolidate("c", p, g) and c == d
    assert c.penalty("c", p + 1) == d.penalty("c", p + 1)
    for bad in (b"", d.to_bytes()[:-1], b"XXX" + d.to_bytes()[3:]):
        with pytest.raises(CorruptStateError):
            DeepState.from_bytes(bad)


def test_lambda_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.stream.settings import Settings

    monkeypatch.setenv("LEARNSTREAM_EWC_LAMBDA", "10")
    assert DeepState().lam == LAMBDA  # the core reads no environment
    s = LearnSession(options=Settings.from_env().verb_options())
    assert s.dispatch({"verb": "record_loss", "body": {"loss": 1.0}})["ok"]
    assert s.blob("session", "default").get("deep", DeepState).lam == 10.0


# -- verbs ---------------------------------------------------------------------------
def test_record_loss_verb_emits_a_boundary_event() -> None:
    s = LearnSession()
    assert s.dispatch({"verb": "record_loss"})["error"] == "loss required"
    assert s.dispatch({"verb": "record_loss", "body": {"loss": "x"}})["ok"] is False
    for _ in range(6):
        s.dispatch({"verb": "record_loss", "body": {"loss": 0.5, "session_key": "a"}})
    assert s.emitted == []
    out = s.dispatch({"verb": "record_loss", "body": {"loss": 100, "session_key": "a"}})
    assert out["data"]["boundary_fired"] is True and out["data"]["boundaries_total"] == 1
    [(role, ev)] = s.emitted
    assert role == "boundaries" and ev["session_key"] == "a" and ev["cause"] == "loss_zscore"
    assert ev["loss"] == 100.0 and ev["z"] > 2.5 and ev["boundaries_total"] == 1 and ev["samples"] == 7
    assert {type(v) for v in ev.values()} <= {str, float, int}
    h = s.dispatch({"verb": "health", "body": {"session_key": "a"}})["data"]
    assert (h["loss_window_size"], h["boundaries_detected"], h["deep_fisher_keys"]) == (7, 1, 0)


def test_consolidate_and_ewc_penalty_verbs() -> None:
    s = LearnSession()
    for body, err in (({}, "param_id required"), ({"param_id": "w"}, "params required"),
                      ({"param_id": "w", "params": [1.0]}, "grads required"),
                      ({"param_id": "w", "params": [1.0, 2.0], "grads": [1.0]},
                       "consolidate: params/grads length mismatch"),
                      ({"param_id": "w", "params": [1e39], "grads": [1.0]},
                       "params/grads have non-finite values")):
        assert s.dispatch({"verb": "consolidate", "body": body})["error"] == err
    assert s.emitted == []
    out = s.dispatch({"verb": "consolidate", "body": {"param_id": "w", "params": [1.0, 2.0, 3.0],
                                                      "grads": [0.5, 0.0, -2.0]}})
    assert out["data"] == {"param_id": "w", "fisher_len": 3}
    [(role, ev)] = s.emitted
    assert role == "consolidations" and ev["param_id"] == "w" and ev["fisher_len"] == 3
    assert ev["fisher_max"] == pytest.approx(0.004) and ev["fisher_mean"] == pytest.approx(0.00425 / 3)
    pen = s.dispatch({"verb": "ewc_penalty", "body": {"param_id": "w", "params": [1.0, 2.0, 3.0]}})
    assert pen["data"] == {"param_id": "w", "penalty": 0.0}
    pen = s.dispatch({"verb": "ewc_penalty", "body": {"param_id": "w", "params": [1.0, 2.0, 4.0]}})
    assert pen["data"]["penalty"] == pytest.approx(LAMBDA * 0.004)
    assert s.dispatch({"verb": "ewc_penalty", "body": {"param_id": "z", "params": [1.0]}})["data"]["penalty"] == 0
    assert s.dispatch({"verb": "health"})["data"]["deep_fisher_keys"] == 1


def test_consolidate_hands_ewc_to_a_matching_instant_adapter() -> None:
    s = LearnSession()
    s.dispatch({"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": 3}})  # n_params = 2*(3+2) = 10
    s.dispatch({"verb": "consolidate", "body": {"param_id": "x", "params": [0.0] * 9, "grads": [1.0] * 9}})
    inst = s.blob("session", "default").get("instant", InstantState)
    assert not inst.has_ewc
    params = [float(i) for i in range(10)]
    s.dispatch({"verb": "consolidate", "body": {"param_id": "y", "params": params, "grads": [1.0] * 10}})
    inst = s.blob("session", "default").get("instant", InstantState)
    deep = s.blob("session", "default").get("deep", DeepState)
    assert inst.has_ewc and inst.ewc_lambda == LAMBDA
    assert np.array_equal(inst.ewc_f, deep.fisher["y"]) and np.array_equal(inst.ewc_snap, params)


def test_deep_state_survives_reopening_the_database(tmp_path) -> None:
    s = LearnSession(path=tmp_path / "db")
    for v in (0.5, 0.6, 0.4, 0.5):
        s.dispatch({"verb": "record_loss", "body": {"loss": v}})
    s.dispatch({"verb": "consolidate", "body": {"param_id": "w", "params": [1.0, 2.0], "grads": [1.0, 1.0]}})
    s.close()
    s2 = LearnSession(path=tmp_path / "db")
    h = s2.dispatch({"verb": "health"})["data"]
    assert (h["loss_window_size"], h["deep_fisher_keys"]) == (4, 1)
    assert s2.dispatch({"verb": "record_loss", "body": {"loss": 50.0}})["data"]["boundary_fired"] is True
    pen = s2.dispatch({"verb": "ewc_penalty", "body": {"param_id": "w", "params": [1.0, 3.0]}})["data"]["penalty"]
    assert pen == pytest.approx(LAMBDA * 0.001)
    s2.close()


@pytest.mark.parametrize("now_ms", ["yesterday", -5, 1.5, True, 2 ** 53])
def test_record_loss_and_consolidate_check_now_ms_as_their_topic_schemas_do(now_ms: object) -> None:
    """Neither verb uses ``now_ms``; a bad one was applied without a word while the topic schemas (and so
    the SDK) refused it. Refused now, nothing changed."""
    s = LearnSession()
    s.dispatch({"verb": "record_loss", "body": {"loss": 0.5}})
    before = s.dispatch({"verb": "session_info"})["data"]["digest"]
    error = "now_ms must be an integer (epoch ms) in [0, 9007199254740991]"
    assert s.dispatch({"verb": "record_loss", "body": {"loss": 0.3, "now_ms": now_ms}})["error"] == error
    assert s.dispatch({"verb": "consolidate", "body": {"param_id": "p", "params": [1.0], "grads": [0.5],
                                                       "now_ms": now_ms}})["error"] == error
    assert s.dispatch({"verb": "session_info"})["data"]["digest"] == before
    assert s.dispatch({"verb": "record_loss", "body": {"loss": 0.3, "now_ms": 5}})["ok"]


def test_the_verbs_refuse_losses_param_ids_and_values_they_cannot_keep_with_a_reason() -> None:
    """An outside trial: a finite loss of 3.3e38 was taken, overflowed the window's float32 spread (the detector
    missed a real jump; its boundary event said z: null), 1e308 was stored as an infinity and dropped under
    ok: true; a 990,000-character param_id was kept and sent with every
    consolidation event."""
    s = LearnSession()

    def call(verb: str, **body: object) -> dict:
        return s.dispatch({"verb": verb, "body": body})

    for loss in (3.3e38, -1e19, 1e308):
        out = call("record_loss", loss=loss)
        assert out["ok"] is False and "loss must be within ±1e+18" in out["error"], out
    assert call("record_loss", loss=1e18)["data"]["samples"] == 1
    assert call("record_loss", loss=math.nan)["data"]["samples"] == 1  # non-finite: nothing stored (spec)
    for verb in ("consolidate", "ewc_penalty"):
        assert call(verb, param_id="x" * 257, params=[0.1], grads=[0.1])["error"] == \
            "param_id must be at most 256 characters (got 257)"
        assert "blank" in call(verb, param_id=" \t", params=[0.1], grads=[0.1])["error"]
    assert call("consolidate", param_id="x" * 256, params=[0.1], grads=[0.1])["ok"]
    assert s.dispatch({"verb": "record_loss", "body": {"loss": 0.5, "session_key": "   "}})["error"] == \
        "session_key is blank (a key needs a character other than whitespace)"
