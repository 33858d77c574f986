"""The learning loop's boundary modes: the default CUSUM (LossCusum) and the reference z-score."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from workers.verbs.codec import encode_embedding_b64
from workers.cores.boundary import LossCusum
from workers.cores.loop import LoopState
from workers.verbs.session import LearnSession
from workers.errors import CorruptStateError

DIM = 4


def _curve(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    return 0.2 + 2.0 * np.exp(-np.arange(n) / 8.0) + noise * rng.standard_normal(n)


def test_fires_on_a_task_switch_and_not_on_the_noise_before_it() -> None:
    rng = np.random.default_rng(0)
    losses = np.concatenate([_curve(rng, 150, 0.1), _curve(rng, 150, 0.1)])
    det = LossCusum()
    fired = [i for i, v in enumerate(losses.tolist()) if det.push(v)]
    assert len(fired) == 1 and 150 <= fired[0] < 158


def test_the_reference_zscore_fires_on_the_same_noise() -> None:
    """What the default replaces: the 10-loss z-score also fires between the switches."""
    from workers.cores.deep import DeepState

    rng = np.random.default_rng(0)
    losses = np.concatenate([_curve(rng, 150, 0.1), _curve(rng, 150, 0.1)])
    d = DeepState()
    fired = [i for i, v in enumerate(losses.tolist()) if d.observe_loss(v).boundary_fired]
    assert len(fired) > 3


def test_non_finite_losses_are_ignored_and_state_round_trips() -> None:
    det = LossCusum()
    for v in (0.5, 0.6, math.nan, 0.55, math.inf, 0.5, 0.52, 0.49, 0.5, 0.51):
        assert det.push(v) is False
    assert det.n == 8
    back = LossCusum.from_bytes(det.to_bytes())
    assert back == det
    for v in (0.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0):
        assert back.push(v) == det.push(v)
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(det.to_bytes()[:-1])
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(b"XXX" + det.to_bytes()[3:])


def test_a_large_jump_fires_within_four_losses() -> None:
    """The jump rule: a new task whose loss starts far above the old level and falls back within a few
    batches (too soon for the CUSUM's evidence) is a boundary on the loss after the third high one, once
    that loss is still 2 spreads up (CONFIRM: the rise lasts)."""
    import workers.cores.boundary as bmod

    rng = np.random.default_rng(3)
    calm = 0.3 + 0.05 * rng.standard_normal(40)
    burst = np.array([1.6, 1.2, 0.9, 0.5, 0.35, 0.3, 0.3, 0.3])   # back near the old level after 3
    losses = np.concatenate([calm, burst]).tolist()
    det = LossCusum()
    assert [i for i, v in enumerate(losses) if det.push(v)] == [43]
    old = bmod.JUMP_N
    try:
        bmod.JUMP_N = 10**9    # the CUSUM alone misses it
        det = LossCusum()
        assert not any(det.push(v) for v in losses)
    finally:
        bmod.JUMP_N = old


def test_older_detector_states_read_without_their_later_fields() -> None:
    """Version 1 (before the jump rule), 2 (before the task-long spread), 3 (before the trend and the
    jump rate), 4 (before the rate of transient drops), 5 (before the level-shift test), 6 (before the
    previous task's length), 7 (before the autocorrelation) and 8 (before the products waiting to be learned)
    still load; the later fields start empty."""
    det = LossCusum()
    wander = np.random.default_rng(0).normal(0.5, 0.03, 140).tolist()   # the autocorrelation learns from AC_FROM on
    for v in (0.5, 0.6, 0.55, 0.5, 0.52, 0.49, 0.5, 0.51, 0.5, 0.7, 0.48, 0.5, 0.62, 0.5, 0.49, 0.51, 0.45, 0.42,
              0.5, 0.2, 0.5, 0.52, 0.5, 0.49, 0.51, *wander):
        assert not det.push(v)
    det.gap = 31
    v9 = det.to_bytes()
    assert len(det.ac_wait) == 4
    v8 = v9[:3] + bytes([8]) + v9[4:-72]
    assert det.n_slow > 0 and det.var_slow > 0.0 and det.trend != 0.0 and det.exceed > 0.0 and det.drops > 0.0
    assert det.seen > 0 and det.slow_var > 0.0 and det.ac_n > 0 and det.ac_den > 0.0 and det.ac_num != 0.0
    v7 = v8[:3] + bytes([7]) + v8[4:-32]
    v6 = v8[:3] + bytes([6]) + v8[4:-40]
    v5 = v8[:3] + bytes([5]) + v8[4:-72]
    v4 = v8[:3] + bytes([4]) + v8[4:-80]
    v3 = v8[:3] + bytes([3]) + v8[4:-96]
    v2 = v8[:3] + bytes([2]) + v8[4:-112]
    v1 = v8[:3] + bytes([1]) + v8[4:-120]
    back9 = LossCusum.from_bytes(v9)
    assert back9 == det and back9.ac_wait == det.ac_wait
    back8 = LossCusum.from_bytes(v8)
    assert back8.gap == 31 and (back8.ac_num, back8.ac_den, back8.ac_prev, back8.ac_n) == (
        det.ac_num, det.ac_den, det.ac_prev, det.ac_n) and back8.ac_wait == []
    assert LossCusum.from_bytes(back8.to_bytes()) == back8
    for old, version in ((v1, 1), (v2, 2), (v3, 3), (v4, 4), (v5, 5), (v6, 6), (v7, 7)):
        back = LossCusum.from_bytes(old)
        assert (back.mu, back.var, back.S, back.n) == (det.mu, det.var, det.S, det.n)
        assert (back.trend, back.exceed) == ((det.trend, det.exceed) if version >= 4 else (0.0, 0.0))
        assert back.drops == (det.drops if version >= 5 else 0.0)
        assert (back.seen, back.fast, back.slow, back.slow_var) == (
            (det.seen, det.fast, det.slow, det.slow_var) if version >= 6 else (0, 0.0, 0.0, 0.0))
        assert (back.var_slow, back.n_slow) == ((det.var_slow, det.n_slow) if version >= 3 else (0.0, 0))
        assert back.jump == (det.jump if version >= 2 else 0)
        assert back.gap == (31 if version == 7 else 0)
        assert (back.ac_num, back.ac_den, back.ac_n, back.autocorrelation) == (0.0, 0.0, 0, 0.0)
        assert LossCusum.from_bytes(back.to_bytes()) == back     # re-saved as the current version
    for tail in (struct.pack("<q8d", -1, *[0.0] * 8),                      # a negative count waiting
                 struct.pack("<q8d", 5, *[0.0] * 8),                       # more than AC_WAIT waiting
                 struct.pack("<q8d", 1, math.nan, 0.1, *[0.0] * 6),        # a NaN product
                 struct.pack("<q8d", 2, 0.0, 0.1, 0.2, -0.1, *[0.0] * 4)):  # a negative square
        with pytest.raises(CorruptStateError):
            LossCusum.from_bytes(v9[:-72] + tail)
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(v9[:3] + bytes([8]) + v9[4:])   # a v9 body labelled v8
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(v8[:3] + bytes([1]) + v8[4:])   # a v8 body labelled v1
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(v8[:3] + bytes([7]) + v8[4:])   # a v8 body labelled v7
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(v8[:3] + bytes([2]) + v8[4:-16])   # no version's size
    for tail in (struct.pack("<3dq", 0.1, 0.2, 0.0, -1),          # a negative count
                 struct.pack("<3dq", 0.1, -0.2, 0.0, 5),          # a negative mean square
                 struct.pack("<3dq", math.nan, 0.2, 0.0, 5),      # a NaN EMA
                 struct.pack("<3dq", 0.1, 0.2, math.inf, 5)):     # an infinite residual
        with pytest.raises(CorruptStateError):
            LossCusum.from_bytes(v8[:-len(tail)] + tail)
    with pytest.raises(CorruptStateError):   # negative counts, a NaN EMA in a v7 state
        LossCusum.from_bytes(v7[:-40] + struct.pack("<3dqq", math.nan, 0.5, 0.0, 3, 0))
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(v6[:-8] + struct.pack("<q", -1))   # a negative count in a v6 state
    bad = bytearray(v5)
    bad[-8:] = struct.pack("<d", 1.5)   # a drop rate above 1
    with pytest.raises(CorruptStateError):
        LossCusum.from_bytes(bytes(bad))


def _short_tasks(seed: int, noise: float, tau: float, floor: float, n: int = 25) -> np.ndarray:
    """Two 25-batch tasks whose loss falls from 2.4 towards ``floor`` (time constant ``tau``): the first has
    not converged when the second starts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.concatenate([floor + (2.4 - floor) * np.exp(-t / tau) + noise * rng.standard_normal(n)
                           for _ in range(2)])


def test_a_switch_after_a_short_still_falling_task_is_found_with_the_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delayed reference lags above a falling loss; the trend-aware forecast measures the new task's jump
    from where the loss is. 20 noisy (sd 0.2) short tasks: the switch is found within 10 losses in at least
    18 and nothing else fires; without the trend (TREND_CAP = 0) at most 15 are found."""
    import workers.cores.boundary as boundary

    def found() -> tuple[int, int]:
        hits = other = 0
        for seed in range(20):
            det = LossCusum()
            fired = [i for i, v in enumerate(_short_tasks(seed, 0.2, 30.0, 0.3).tolist()) if det.push(v)]
            hit = any(25 <= i < 35 for i in fired)
            hits += hit
            other += len(fired) - hit
        return hits, other

    hits, other = found()
    assert hits >= 18 and other == 0
    monkeypatch.setattr(boundary, "TREND_CAP", 0.0)
    assert found()[0] <= 15


def _noisy_short_tasks(seed: int, noise: float = 0.4, tasks: int = 20) -> np.ndarray:
    """``tasks`` 25-batch tasks, each falling from U(2, 2.5) to U(0.05, 0.4) with time constant U(5, 20)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(tasks):
        start, floor, tau = rng.uniform(2.0, 2.5), rng.uniform(0.05, 0.4), rng.uniform(5, 20)
        out.append(floor + (start - floor) * np.exp(-np.arange(25) / tau) + noise * rng.standard_normal(25))
    return np.concatenate(out)


def test_a_stream_of_short_tasks_is_tested_at_the_lower_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a task has lasted at most GAP losses, the next one is tested at H_FREQUENT: on 10 streams of 20
    noisy (sd 0.4) 25-batch tasks at least 160 of the 190 switches are found within 10 losses, with at
    most 2 other firings; at the one threshold H at most 130 (a missed switch widened the spread and
    the next ones went unseen)."""
    import workers.cores.boundary as boundary

    def found() -> tuple[int, int]:
        hits = other = 0
        for seed in range(10):
            det = LossCusum()
            fired = [i for i, v in enumerate(_noisy_short_tasks(seed).tolist()) if det.push(v)]
            hit = {s for s in range(25, 500, 25) if any(s <= i < s + 10 for i in fired)}
            hits += len(hit)
            other += sum(not any(s <= i < s + 10 for s in hit) for i in fired)
        return hits, other

    hits, other = found()
    assert hits >= 160 and other <= 2
    monkeypatch.setattr(boundary, "H_FREQUENT", boundary.H)
    assert found()[0] <= 130


def test_the_lower_threshold_follows_a_short_task_for_a_window_only() -> None:
    """The rule itself: H_FREQUENT only after a task of at most GAP losses, and only for the first WINDOW
    losses of the next; a firing records the length of the task it ended."""
    from workers.cores.boundary import GAP, H, H_FREQUENT, WINDOW

    det = LossCusum()
    assert det.gap == 0 and det.threshold == H             # before the first firing
    for gap, n, want in ((30, 10, H_FREQUENT), (GAP, WINDOW, H_FREQUENT), (30, WINDOW + 1, H),
                         (GAP + 1, 10, H)):
        det.gap, det.n = gap, n
        assert det.threshold == want, (gap, n)
    det = LossCusum()
    losses = [0.3 + 0.01 * (i % 3) for i in range(200)] + [2.0] * 6 + [0.3 + 0.01 * (i % 3) for i in range(40)]
    fired = [i for i, v in enumerate(losses) if det.push(v)]
    assert len(fired) == 1 and det.gap == fired[0] + 1 > GAP and det.threshold == H


def test_a_rise_in_progress_early_in_a_task_widens_the_spread_little(monkeypatch: pytest.MonkeyPatch) -> None:
    """Early in a task the spread is a plain mean of few squares. A new task's first high losses enter the
    reference (after the delay line) while the CUSUM is still gathering evidence; there one 4-sigma residual
    counts as at most CV_RISE (2.5) sigmas, so sigma grows by under a quarter. Counted up to CV (5) sigmas, as
    before, it grew by half, which hid that switch and, over a row of short tasks, the next ones."""
    import workers.cores.boundary as boundary

    def widening() -> float:
        rng = np.random.default_rng(3)
        det = LossCusum()
        for v in (0.5 + 0.1 * rng.standard_normal(20)).tolist():
            assert not det.push(v)
        sig0, mu0 = det.sigma, det.mu
        for z in (4.0, 2.0, 2.0, 2.0, 2.0):   # the 4-sigma loss leaves the delay line on the last push
            assert not det.push(mu0 + z * sig0)
        assert det.S > boundary.S_RISE
        return det.sigma / sig0

    assert widening() < 1.25
    monkeypatch.setattr(boundary, "CV_RISE", boundary.CV)
    assert widening() > 1.45


def test_a_start_up_is_not_tested_on_a_spread_of_a_few_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's losses of a stationary Bernoulli 0.5 feedback stream (bench boundaries, seed 2019) that begin
    with three perfect answers: the spread is seeded from those equal losses (sigma at the floor), and three bad
    answers in a row then passed the jump rule at the 11th loss, an adapter reset on noise. No test runs until
    the reference holds TEST_FROM losses."""
    import workers.cores.boundary as boundary

    losses = [0.0, 0.0, 0.0, 0.7, 0.03, 0.027, 0.024, 0.722, 0.75, 0.775, 0.797, 0.818, 0.136, 0.822, 0.84,
              0.856, 0.87, 0.883, 0.195, 0.876, 0.888, 0.899, 0.209, 0.888]

    def fired() -> list[int]:
        det = LossCusum()
        return [i for i, v in enumerate(losses) if det.push(v)]

    assert fired() == []
    monkeypatch.setattr(boundary, "TEST_FROM", boundary.WARM)   # tested as soon as warm, as before
    monkeypatch.setattr(boundary, "CONFIRM", 0)                 # and the run not confirmed, as before
    assert fired() == [10]


def test_a_switch_at_a_high_training_loss_is_not_hidden_by_the_quality_scale_floors() -> None:
    """A cross-entropy level of ~1.6 with noise 0.1 jumping back to 2.4: the relative floor and allowance count
    the level only up to 1 (the quality scale's max), so the 8-sigma jump is found in every run."""
    for seed in range(5):
        det = LossCusum()
        fired = [i for i, v in enumerate(_short_tasks(seed, 0.1, 25.0, 1.1).tolist()) if det.push(v)]
        assert len(fired) == 1 and 25 <= fired[0] < 35


def _loop_losses(q: np.ndarray) -> list[float]:
    """The learning loop's losses for qualities q: max(1 - q_eff, 0), q_eff = 0.7 q + 0.3 EMA (rate 0.1)."""
    out, ema = [], float(q[0])
    for v in q.tolist():
        out.append(max(1.0 - float(np.float32(0.7 * v + 0.3 * ema)), 0.0))
        ema += 0.1 * (v - ema)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_an_outage_of_three_zero_qualities_is_not_a_boundary(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Good feedback (Beta(8, 2)) with three zero qualities in a row (an upstream outage), then good again: the
    three losses pass the jump rule, but the next one is back near the level, so the rise did not last and the
    adapter is kept. Without the confirming loss (CONFIRM = 0) each outage was a reset (bench boundaries
    --switch-worlds: 78 resets in 80 outages)."""
    import workers.cores.boundary as boundary

    rng = np.random.default_rng(seed)
    q = rng.beta(8, 2, 1200)
    q[600:603] = 0.0
    q[603] = 0.8   # the next answer a usual one (a poor one, 0.5, would confirm the rise: 7 of 40 in the bench)
    losses = _loop_losses(q)

    def fired() -> list[int]:
        det = LossCusum()
        return [i for i, v in enumerate(losses) if det.push(v)]

    assert fired() == []
    monkeypatch.setattr(boundary, "CONFIRM", 0)
    assert fired() == [602]


@pytest.mark.parametrize("seed", [1016, 2009])
def test_rare_bad_answers_in_a_row_on_good_feedback_are_not_a_boundary(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 stationary Bernoulli 0.95 qualities (seeds where three bad answers in a row did fire): the jump
    rule asks for a longer run where single jumps are common, so nothing fires; with every run of 3 a
    boundary (JUMP_P = 1) it fires."""
    import workers.cores.boundary as boundary

    rng = np.random.default_rng(seed)
    losses = _loop_losses((rng.random(10_000) < 0.95).astype(float))
    det = LossCusum()
    assert not any(det.push(v) for v in losses)
    assert det.exceed > 0.02 and det._jump_run() >= 4
    monkeypatch.setattr(boundary, "JUMP_P", 1.0)
    monkeypatch.setattr(boundary, "CONFIRM", 0)   # nor a confirming loss after the run
    det = LossCusum()
    assert any(det.push(v) for v in losses)


def test_a_long_run_of_good_answers_does_not_shrink_the_spread_below_the_task_long_floor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad answers 10% of the time (loss 0.7 among 0.0), then 80 good ones in a row: the EMA spread
    has forgotten the bad answers, the task-long spread has not, so three bad answers in a row are
    not a new task. Without the floor (SLOW = 0) and with runs of 3 always a jump (JUMP_P = 1) they fire."""
    import workers.cores.boundary as boundary

    def run() -> tuple[LossCusum, list[bool]]:
        rng = np.random.default_rng(3)
        det = LossCusum()
        assert not any(det.push(v) for v in np.where(rng.random(400) < 0.1, 0.7, 0.0).tolist())
        assert not any(det.push(0.0) for _ in range(80))
        return det, [det.push(0.7) for _ in range(3)]

    det, fired = run()
    assert fired == [False, False, False]
    assert math.sqrt(det.var) < 0.75 * det.sigma
    monkeypatch.setattr(boundary, "SLOW", 0.0)
    assert not run()[1][-1]        # the jump rule now also asks for a longer run at a 10% jump rate ...
    monkeypatch.setattr(boundary, "JUMP_P", 1.0)
    monkeypatch.setattr(boundary, "CONFIRM", 0)
    assert run()[1][-1]            # ... without both (and no confirming loss), three bad answers are a boundary

@pytest.mark.parametrize("seed", [1, 26])
def test_a_run_of_good_answers_among_mostly_bad_ones_is_not_a_boundary(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 stationary Bernoulli 0.3 qualities (seeds where it fired twice): a run of seven or more good
    answers dragged the reference and its trend down, and the return to the usual bad answers read as a rise.
    Two guards, each enough here: good answers are transient drops common enough to shrink how far one
    moves the reference (DROP_BASE), and after VETO_FROM losses a firing must stand above the slow level,
    which the usual bad answers do not. Without both it fires twice."""
    import workers.cores.boundary as boundary

    rng = np.random.default_rng(seed)
    losses = _loop_losses((rng.random(10_000) < 0.3).astype(float))

    def fired() -> int:
        det = LossCusum()
        return sum(det.push(v) for v in losses)

    det = LossCusum()
    assert not any(det.push(v) for v in losses)
    assert det.drops > boundary.DROP_BASE and det.seen == len(losses)
    with monkeypatch.context() as m:
        m.setattr(boundary, "DROP_BASE", 1.0)   # the full limit for every drop: the level guard holds
        assert fired() == 0
    monkeypatch.setattr(boundary, "VETO_FROM", 10**9)   # no level guard: the drop limit holds
    assert fired() == 0
    monkeypatch.setattr(boundary, "DROP_BASE", 1.0)   # neither
    assert fired() == 2


def test_a_learning_curve_falls_at_the_full_limit() -> None:
    """A falling training loss drops far below the delayed reference again and again, but each drop persists
    (the losses after it stay low), so none is transient and the reference follows at the full limit."""
    det = LossCusum()
    for v in _curve(np.random.default_rng(0), 40, 0.02).tolist():
        assert not det.push(v)
    assert det.drops == 0.0


@pytest.mark.parametrize(("before", "after"), [(0.7, 0.5), (0.5, 0.3), (0.4, 0.1)])
def test_a_lasting_moderate_quality_drop_is_found_by_the_level_shift_test(before: float, after: float,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer quality drops by 0.2-0.3 from the middle of the scale and stays there (sd 0.02): the CUSUM's
    reference follows such a rise within a few losses and never sums to its threshold; the slow level-shift
    test finds it within 50 events. Without it (SHIFT_Z = inf) nothing fires."""
    import workers.cores.boundary as boundary

    rng = np.random.default_rng(7)
    q = np.clip(np.concatenate([rng.normal(before, 0.02, 600), rng.normal(after, 0.02, 600)]), 0, 1)
    losses = _loop_losses(q)

    def fired() -> list[int]:
        det = LossCusum()
        return [i for i, v in enumerate(losses) if det.push(v)]

    got = fired()
    assert len(got) == 1 and 600 <= got[0] < 650, got
    monkeypatch.setattr(boundary, "SHIFT_Z", math.inf)
    assert fired() == []


@pytest.mark.parametrize(("seed", "at"), [(35, 2600), (53, 2541)])
def test_after_a_long_stretch_a_firing_must_stand_above_the_slow_level(seed: int, at: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform qualities, 10,000 events: a good stretch drags the fast reference down and a cluster of bad
    answers then sums past the threshold, though it is not above the level of the last few hundred losses.
    Without the level guard (VETO_FROM = inf) it fired there."""
    import workers.cores.boundary as boundary

    losses = _loop_losses(np.random.default_rng(seed).random(10_000))

    def fired() -> list[int]:
        det = LossCusum()
        return [i for i, v in enumerate(losses) if det.push(v)]

    assert fired() == []
    monkeypatch.setattr(boundary, "VETO_FROM", 10**9)
    assert fired() == [at]


def _ar1_qualities(seed: int, phi: float, n: int = 10_000) -> np.ndarray:
    """0.7 + 0.15 z, z a unit-variance AR(1) with lag-1 correlation ``phi``: the AR(1) row of bench boundaries."""
    from tests.helpers import bench_module

    return bench_module("boundaries")._quality(f"AR(1) {phi}", np.random.default_rng(seed), n)


@pytest.mark.parametrize("seed", range(4))
def test_qualities_that_wander_are_not_read_as_level_shifts(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stationary qualities with a lag-1 correlation of 0.5 (10,000 events): the fast EMA's excursions are
    wider than independent losses would make them. Measured against the stream's own autocorrelation
    nothing fires; taken as independent (AC_MAX = 0), every seed fired 2-7 times."""
    import workers.cores.boundary as boundary

    losses = _loop_losses(_ar1_qualities(seed, 0.5))

    def fired() -> tuple[list[int], float]:
        det = LossCusum()
        return [i for i, v in enumerate(losses) if det.push(v)], det.autocorrelation

    got, rho = fired()
    assert got == [] and 0.45 < rho < 0.7, (got, rho)
    monkeypatch.setattr(boundary, "AC_MAX", 0.0)
    got, rho = fired()
    assert len(got) >= 2 and rho == 0.0, got


def test_independent_qualities_have_almost_no_autocorrelation_and_a_drop_is_still_found() -> None:
    """I.i.d. qualities: the loop's losses carry only its own quality EMA's correlation (~0.05), which widens
    the level-shift test by a few percent; a lasting drop from 0.7 to 0.5 is found within 50 events."""
    rng = np.random.default_rng(3)
    det = LossCusum()
    q = np.concatenate([np.clip(rng.normal(0.7, 0.1, 3000), 0, 1), np.clip(rng.normal(0.5, 0.1, 600), 0, 1)])
    fired = [i for i, v in enumerate(_loop_losses(q)) if det.push(v)]
    assert len(fired) == 1 and 3000 <= fired[0] < 3050, fired
    assert LossCusum.from_bytes(det.to_bytes()) == det
    det2 = LossCusum()
    for v in _loop_losses(rng.random(5000)):
        det2.push(v)
    assert 0.0 <= det2.autocorrelation < 0.1


def _quiet_drops(seed: int, high: float, low: float, sd: float = 0.02) -> tuple[np.ndarray, list[int]]:
    """Quality at ``high`` and ``low`` (sd ``sd``) in turns, 8 segments of 500-1,500 events: where each drop starts."""
    rng = np.random.default_rng(seed)
    q: list[float] = []
    drops = []
    for seg in range(8):
        if seg % 2:
            drops.append(len(q))
        q += rng.normal(low if seg % 2 else high, sd, int(rng.integers(500, 1500))).tolist()
    return np.clip(np.array(q), 0.0, 1.0), drops


def _found_quiet_drops(sd: float) -> int:
    """Of the 12 drops of three ``_quiet_drops`` streams (0.7 and 0.5 in turns), those found within 50 events."""
    n = 0
    for seed in range(3):
        q, drops = _quiet_drops(seed, 0.7, 0.5, sd)
        det = LossCusum()
        fired = [i for i, v in enumerate(_loop_losses(q)) if det.push(v)]
        n += sum(any(d <= f < d + 50 for f in fired) for d in drops)
    return n


@pytest.mark.parametrize(("gate", "clip", "most"), [(3.0, math.inf, 11), (math.inf, math.inf, 3)])
def test_a_lasting_shift_in_a_quiet_stream_is_not_learned_as_autocorrelation(gate: float, clip: float, most: int,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Quality 0.7 and 0.5 in turns (sd 0.005), 4 drops in each of 3 streams: every drop is found within 50
    events. A shift is many of such a stream's spreads, so its residuals' products would read as a strong
    correlation and hide the next drops: without the clip (a product counts each residual at most AC_CLIP
    spreads) 11 of the 12 were found, without the clip and the gate (the estimate learns only while the
    level-shift test's EMAs are close) 3. (At sd 0.02 every drop is found without either, since the
    level-shift test's spread is measured around the fast EMA; around the slow one it was 9 and 2.)"""
    import workers.cores.boundary as boundary

    assert _found_quiet_drops(0.005) == 12
    assert _found_quiet_drops(0.02) == 12
    monkeypatch.setattr(boundary, "AC_GATE", gate)
    monkeypatch.setattr(boundary, "AC_CLIP", clip)
    assert _found_quiet_drops(0.005) <= most


def test_alternating_levels_keep_being_found() -> None:
    """Bernoulli qualities alternating between 0.8 and 0.4 every 500 events (10 drops in 10,000): the level-shift
    test keeps finding the drops after the first. With its spread measured around the slow EMA, whose lag held
    the previous level change for hundreds of losses, little more than each run's first drop was found (4 of 30
    here; 19 now)."""
    found = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        p = np.where((np.arange(10_000) // 500) % 2 == 0, 0.8, 0.4)
        q = (rng.random(10_000) < p).astype(float)
        det = LossCusum()
        fired = [i for i, v in enumerate(_loop_losses(q)) if det.push(v)]
        found += sum(any(d <= f < d + 500 for f in fired) for d in range(500, 10_000, 1000))
    assert found >= 15


def _switching_loss_curves(seed: int, noise: float) -> np.ndarray:
    """20 tasks of U(25, 200) losses, each falling from U(2, 2.5) (bench boundaries' curve streams)."""
    from tests.helpers import bench_module

    return bench_module("boundaries").curve_stream(np.random.default_rng(seed), 20, None, noise)[0]


@pytest.mark.parametrize("noise", [0.2, 0.4])
def test_task_switches_and_falling_curves_are_not_learned_as_autocorrelation(noise: float,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss curves with task switches (3 streams): the estimate stays below AC_DEAD (measured 0.01-0.08), so
    the CUSUM is not widened where tasks switch. Learned from a restart's first losses on (AC_FROM = 2: a
    new task's falling curve) or without holding products back (AC_WAIT = 0: the losses just before a
    firing are already the new task's jump), it rose above AC_DEAD (0.22-0.67)."""
    import workers.cores.boundary as boundary

    def highest() -> float:
        top = 0.0
        for seed in range(3):
            det = LossCusum()
            for v in _switching_loss_curves(seed, noise).tolist():
                det.push(v)
                top = max(top, det.autocorrelation)
        return top

    assert highest() < 0.1
    for name, value in (("AC_FROM", 2), ("AC_WAIT", 0)):
        with monkeypatch.context() as patched:
            patched.setattr(boundary, name, value)
            assert highest() > boundary.AC_DEAD, name


def test_a_restart_drops_the_products_still_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A jump from 0.4 to 2.0 (sd 0.05) fires at its second loss; the first jump loss's product was still
    waiting and is never learned: the mean square stays within 1.5x of its level before the jump, through
    the new task's next 150 losses. Learned at once (AC_WAIT = 0), it more than doubled."""
    import workers.cores.boundary as boundary

    rng = np.random.default_rng(5)
    losses = rng.normal(0.4, 0.05, 400).tolist() + rng.normal(2.0, 0.05, 150).tolist()

    def run() -> tuple[float, float]:
        det = LossCusum()
        before = 0.0
        for i, v in enumerate(losses):
            if i == 400:
                before = det.ac_den
            assert det.push(v) == (i == 401), i
        return before, det.ac_den

    before, after = run()
    assert before > 0.0 and after < 1.5 * before, (before, after)
    monkeypatch.setattr(boundary, "AC_WAIT", 0)
    before, after = run()
    assert after > 2.0 * before, (before, after)


@pytest.mark.parametrize(("seed", "widened"), [(0, 15), (1, 1)])
def test_qualities_correlated_at_0_9_widen_the_cusum(seed: int, widened: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """AR(1) qualities at 0.9 (excursions tens of events long), 10,000 events: the CUSUM, its increments
    divided by the long-run factor of the correlation above AC_DEAD, fires 15 and 1 times; not widened
    (AC_DEAD = 1), 113 and 119."""
    import workers.cores.boundary as boundary

    losses = _loop_losses(_ar1_qualities(seed, 0.9))

    def fired() -> int:
        det = LossCusum()
        return sum(det.push(v) for v in losses)

    assert fired() == widened
    monkeypatch.setattr(boundary, "AC_DEAD", 1.0)
    assert fired() > 100


def test_the_level_shift_test_waits_for_its_windows_after_a_restart() -> None:
    """Fewer than SHIFT_FROM losses since a restart: no level-shift test (a 25-batch task is left to the
    CUSUM); the EMAs are plain means while few."""
    import workers.cores.boundary as boundary

    det = LossCusum()
    for i in range(boundary.SHIFT_FROM - 1):
        assert not det._shifted(0.1 if i < 50 else 0.9)   # a big rise, but too early
    assert det.seen == boundary.SHIFT_FROM - 1 and abs(det.slow - (50 * 0.1 + 49 * 0.9) / 99) < 1e-9


def _feedback(s: LearnSession, q: np.ndarray, seed: int = 0, **body) -> dict:
    rng = np.random.default_rng(seed)
    evs = [{"embedding_b64": encode_embedding_b64(rng.standard_normal(DIM).astype(np.float32)),
            "model": "ab"[i % 2], "quality": float(v)} for i, v in enumerate(q)]
    out = s.dispatch({"verb": "learn_feedback", "body": {"events": evs, **body}})
    assert out["ok"], out
    return out["data"]


def _session() -> LearnSession:
    s = LearnSession()
    assert s.dispatch({"verb": "init_instant", "body": {"targets": ["a", "b"], "dim": DIM}})["ok"]
    return s


@pytest.mark.parametrize("kind", ["uniform", "mostly good", "mostly bad"])
def test_stationary_feedback_never_resets_the_adapter_by_default(kind: str) -> None:
    rng = np.random.default_rng(1)
    q = {"uniform": rng.random(3000), "mostly good": (rng.random(3000) < 0.9).astype(float),
         "mostly bad": (rng.random(3000) < 0.1).astype(float)}[kind]
    s = _session()
    assert _feedback(s, q)["boundaries"] == 0
    assert s.dispatch({"verb": "health"})["data"]["boundaries_detected"] == 0
    ref = _session()
    assert _feedback(ref, q, boundary="zscore")["boundaries"] > 10   # the reference's mode


def test_a_lasting_quality_drop_is_a_boundary_that_resets_the_adapter() -> None:
    s = _session()
    q = np.concatenate([np.full(100, 0.9), np.full(20, 0.1)])
    out = _feedback(s, q)
    assert out["boundaries"] == 1
    [(role, b), (role2, _c)] = s.emitted
    assert (role, role2) == ("boundaries", "consolidations") and b["cause"] == "loss_cusum"
    assert 100 <= b["event_index"] < 108 and b["boundaries_total"] == 1
    assert s.dispatch({"verb": "health"})["data"]["boundaries_detected"] == 1


def test_the_mode_is_validated_and_persists() -> None:
    s = _session()
    out = s.dispatch({"verb": "learn_feedback", "body": {"model": "a", "quality": 0.5, "embedding": [0.0] * DIM,
                                                         "boundary": "median"}})
    assert out == {"ok": False, "verb": "learn_feedback", "error": "boundary must be one of cusum, zscore"}
    _feedback(s, np.full(5, 0.9), boundary="zscore")
    assert s.blob("session", "default").get("loop", LoopState).boundary_mode == "zscore"
    _feedback(s, np.full(5, 0.9))
    assert s.blob("session", "default").get("loop", LoopState).boundary_mode == "zscore"


def test_a_version_1_loop_state_reads_with_the_default_mode() -> None:
    import struct

    v1 = struct.pack("<3sB?dqqq", b"LSL", 1, True, 0.7, 10, 2, 3)
    st = LoopState.from_bytes(v1)
    assert (st.ema, st.events, st.boundaries, st.envelopes, st.boundary_mode) == (0.7, 10, 2, 3, "cusum")
    assert LoopState.from_bytes(st.to_bytes()) == st


# -- each answer against its own model's usual quality (ModelLevels) ---------------------------------

def _model_runs(seed: int, n: int, mean_run: float, means: tuple[float, ...], drop_at: int | None = None,
                drop: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Qualities N(means[m], 0.1) of models served in runs of geometric length ``mean_run``; from
    ``drop_at`` on, every model's answers are ``drop`` lower (a new task)."""
    rng = np.random.default_rng(seed)
    models, m = np.empty(n, np.int64), 0
    for i in range(n):
        if rng.random() < 1.0 / mean_run:
            m = int(rng.integers(len(means)))
        models[i] = m
    q = np.asarray(means)[models] + 0.1 * rng.standard_normal(n)
    if drop_at is not None:
        q[drop_at:] -= drop
    return np.clip(q, 0.0, 1.0), models


def _feedback_models(s: LearnSession, q: np.ndarray, models: np.ndarray) -> list[int]:
    """One learn_feedback call per 100 events; the events whose envelope fired, by its last index."""
    rng = np.random.default_rng(0)
    fired = []
    for i in range(0, len(q), 100):
        evs = [{"embedding_b64": encode_embedding_b64(rng.standard_normal(DIM).astype(np.float32)),
                "model": "abc"[models[j]], "quality": float(q[j])} for j in range(i, min(i + 100, len(q)))]
        out = s.dispatch({"verb": "learn_feedback", "body": {"events": evs}})
        assert out["ok"], out
        fired += [i + len(evs) - 1] * out["data"]["boundaries"]
    return fired


def _three_models() -> LearnSession:
    s = LearnSession()
    assert s.dispatch({"verb": "init_instant", "body": {"targets": ["a", "b", "c"], "dim": DIM}})["ok"]
    return s


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_models_of_different_quality_served_in_turns_do_not_reset_the_adapter(seed: int) -> None:
    """A router that serves a worse model for a stretch moves the session's quality level without a new
    task (measured against the session as a whole, these runs reset the adapter 37-48 times in 10,000
    events). A model's first answers can still fire (its level is not known yet): none after 300 events."""
    q, models = _model_runs(seed, 6000, 20, (0.8, 0.5, 0.65))
    assert [i for i in _feedback_models(_three_models(), q, models) if i >= 300] == []


def test_a_new_task_lowers_every_model_and_is_still_found() -> None:
    q, models = _model_runs(3, 3000, 20, (0.8, 0.5, 0.65), drop_at=2000, drop=0.35)
    fired = _feedback_models(_three_models(), q, models)
    assert fired and 2000 <= fired[0] < 2100, fired


def test_with_one_model_the_detector_sees_the_loops_own_losses() -> None:
    """One model: q_adj is q, and the losses are those of the loop's own q_eff, bit for bit."""
    from workers.cores.loop import Q_WEIGHT, QUALITY_EMA_RATE, ModelLevels

    q = np.random.default_rng(4).random(500).tolist()
    mixed, ema = [], None
    for v in q:
        ema = v if ema is None else ema
        mixed.append(Q_WEIGHT * v + (1.0 - Q_WEIGHT) * ema)
        ema = ema + QUALITY_EMA_RATE * (v - ema)
    expect = np.maximum(1.0 - np.array(mixed, np.float32).astype(np.float64), 0.0)
    levels = ModelLevels()
    got = np.concatenate([levels.losses([1] * 200, q[:200]), levels.losses([1] * 300, q[200:])])
    assert got.tobytes() == expect.tobytes()


def test_model_levels_persist_in_the_loop_state_and_a_version_2_state_starts_them_afresh() -> None:
    from workers.cores.loop import ModelLevels

    st = LoopState()
    st.levels.losses([0, 2, 2, 0, 1], [0.9, 0.4, 0.5, 0.8, 0.1])
    back = LoopState.from_bytes(st.to_bytes())
    assert back == st and (back.levels.means, back.levels.counts) == (st.levels.means, [2, 1, 2])
    assert back.levels.losses([2], [0.3]).tobytes() == st.levels.losses([2], [0.3]).tobytes()
    v2 = struct.pack("<3sB?dqqqB", b"LSL", 2, True, 0.7, 10, 2, 3, 1)
    old = LoopState.from_bytes(v2)
    assert (old.ema, old.events, old.boundary_mode, old.levels.n) == (0.7, 10, "zscore", 0)
    assert isinstance(old.levels, ModelLevels)
    with pytest.raises(CorruptStateError, match="model levels"):
        LoopState.from_bytes(st.to_bytes()[:-3])


def test_model_levels_out_of_range_are_a_corrupt_state() -> None:
    """Counts that do not add up to the events, a negative count, a non-finite level, an arrival that
    does not match its count: CorruptStateError."""
    from workers.cores.loop import _LEVELS

    head = LoopState().to_bytes()[:-_LEVELS.size]
    good = _LEVELS.pack(1.3, 2, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 1, 0, 1)
    assert LoopState.from_bytes(head + good).levels.arrived == [0, 1]
    for bad in (_LEVELS.pack(1.3, 3, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 1, 0, 1),      # counts != n
                _LEVELS.pack(1.3, 0, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, -1, 0, 1),     # a negative count
                _LEVELS.pack(1.3, 2, 0.6, 2) + struct.pack("<2d2q2q", math.nan, 0.5, 1, 1, 0, 1),  # a NaN level
                _LEVELS.pack(math.inf, 2, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 1, 0, 1),  # an infinite sum
                _LEVELS.pack(1.3, 2, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 1, 0, 2),      # arrived at n
                _LEVELS.pack(1.3, 2, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 1, 0, -1),     # served, never arrived
                _LEVELS.pack(0.8, 1, 0.6, 2) + struct.pack("<2d2q2q", 0.8, 0.5, 1, 0, 0, 0)):     # arrived, never served
        with pytest.raises(CorruptStateError, match="model levels"):
            LoopState.from_bytes(head + bad)


def test_a_version_3_loop_state_reads_its_models_as_served_from_the_start() -> None:
    """Version 3 kept no arrivals: its models are not late (the detector goes on as it did)."""
    from workers.cores.loop import _LEVELS

    v3 = (struct.pack("<3sB?dqqqB", b"LSL", 3, True, 0.7, 2, 0, 1, 0) + _LEVELS.pack(1.3, 2, 0.6, 3)
          + struct.pack("<3d3q", 0.8, 0.5, 0.0, 1, 1, 0))
    st = LoopState.from_bytes(v3)
    assert (st.levels.counts, st.levels.arrived) == ([1, 1, 0], [0, 0, -1])
    assert LoopState.from_bytes(st.to_bytes()) == st


def test_a_late_model_is_kept_out_of_the_detector_until_its_level_is_known() -> None:
    """A model first served after LATE_AFTER answers: its first LATE_WARM losses are NaN (the detector
    skips them), then its offset counts in full; a model served from the start is as before."""
    from workers.cores.loop import EARLY_WARM, LATE_AFTER, LATE_WARM, ModelLevels

    levels = ModelLevels()
    levels.losses([0] * LATE_AFTER, [0.8] * LATE_AFTER)
    got = levels.losses([1] * LATE_WARM + [1, 0], [0.3] * LATE_WARM + [0.3, 0.8])
    assert np.isnan(got[:LATE_WARM]).all() and np.isfinite(got[LATE_WARM:]).all()
    # then an answer at its own level reads as one at the anchor's (the first model): loss 0.2, not 1 - 0.3
    assert levels.arrived == [0, LATE_AFTER] and got[LATE_WARM] == pytest.approx(0.2, abs=1e-6)
    early = ModelLevels()  # a second model from the start: only its first EARLY_WARM answers are kept out
    out = early.losses([0, 1] * 60, [0.8, 0.3] * 60)
    assert early.arrived == [0, 1] and EARLY_WARM < LATE_WARM
    assert np.isnan(out[1:2 * EARLY_WARM:2]).all() and np.isfinite(np.delete(out, range(1, 2 * EARLY_WARM, 2))).all()
    assert out[2 * EARLY_WARM + 1:] == pytest.approx(0.2, abs=1e-6)


def test_the_reference_is_the_first_models_level_not_the_serving_mix() -> None:
    """Offsets are measured against the session's first model: a long run of a worse model no longer drags
    the reference down with it (a served-mix mean did, and the run's end read as a new task), and a model
    first served later does not move it either."""
    from workers.cores.loop import EARLY_WARM, LATE_WARM, ModelLevels

    levels = ModelLevels()
    levels.losses([0] * 20, [0.8] * 20)
    levels.losses([1] * EARLY_WARM, [0.3] * EARLY_WARM)
    run = levels.losses([1] * 300, [0.3] * 300)       # a long run of the worse model: every loss as the first's
    assert run == pytest.approx(0.2, abs=1e-6)
    levels.losses([2] * LATE_WARM, [0.5] * LATE_WARM)  # first served after 100 answers: a late model
    assert levels.losses([0, 2, 1], [0.8, 0.5, 0.3]) == pytest.approx(0.2, abs=1e-6)


def test_three_models_served_in_runs_never_reset_the_adapter() -> None:
    """An independent trial's world: three models (0.85 / 0.6 / 0.35, sd 0.1) served in runs of mean length
    10. With the served-mix reference, 17 of 20 runs of 10,000 events reset the adapter, all within the
    first 222 events; a task lowering every model is still found."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        switch = rng.random(1500) < 0.1
        models = np.zeros(1500, np.int64)
        for i in range(1, 1500):
            models[i] = rng.integers(3) if switch[i] else models[i - 1]
        q = np.clip(np.array([0.85, 0.6, 0.35])[models] + 0.1 * rng.standard_normal(1500), 0.0, 1.0)
        assert _feedback_models(_three_models(), q, models) == [], seed
    q[1000:] = np.clip(q[1000:] - 0.3, 0.0, 1.0)
    fired = _feedback_models(_three_models(), q, models)
    assert fired and 1000 <= fired[0] < 1100, fired


def test_a_worse_model_rolled_out_late_does_not_reset_the_adapter() -> None:
    """Beta(2, 4) answers taking half the traffic after 2,000 answers of a Beta(8, 2) model reset the
    adapter once, at the new model's arrival, in each of 8 runs before the late-model rule; a new task
    lowering both models afterwards is still found."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        models = np.concatenate([np.zeros(2000, np.int64), (rng.random(3000) < 0.5).astype(np.int64)])
        q = np.where(models == 0, rng.beta(8, 2, 5000), rng.beta(2, 4, 5000))
        assert _feedback_models(_three_models(), q, models) == [], seed
    q[4000:] -= 0.4
    fired = _feedback_models(_three_models(), np.clip(q, 0.0, 1.0), models)
    assert fired and 4000 <= fired[0] < 4200, fired
