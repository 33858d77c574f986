"""The learning loop's default task-boundary detector: a CUSUM of loss rises against a delayed, trend-aware reference.

[beyond] The reference detector (``cores.md``, Deep core: ``|loss - mean| / std > 2.5`` over
the previous 10 losses) catches every switch but fires on 4-7% of ordinary steps, and in
the learning loop every firing consolidates and resets the instant adapter. This one
fires on a *lasting* rise of the loss:

- **Reference** (location ``mu``, scale ``sigma``) is built only from losses at least
  ``DELAY`` steps old (a short delay line), so a switch cannot leak into the reference
  before it is detected. ``mu`` is an EMA (rate 0.2); ``sigma^2`` is twice the EMA of the
  squared *upward* residuals (rate 0.02): a falling loss (learning) does not widen it,
  and rare high losses (a bad answer among good ones) keep it wide. After a reset the
  first ``WARM`` losses seed ``mu`` (their mean) and ``sigma`` (their median absolute
  step); ``sigma^2`` is then a plain mean of the squares until the EMA takes over. A loss
  far *below* the reference moves ``mu`` by at most ``CLO`` sigmas (one good answer among
  bad ones is not a new level), and by less where such drops are common and pass: a *transient
  drop* is a reference loss more than ``DROP_Z`` sigmas below ``mu`` whose successors in the delay
  line average back above ``mu - RETURN`` sigmas (a learning curve's fall persists; a good answer
  among mostly bad ones does not). Where their task-long rate (``DROP_PRIOR`` pseudo-losses that
  never dropped) exceeds ``DROP_BASE``, the limit shrinks in proportion, to at least ``CLO_MIN``:
  on Bernoulli 0.25-0.35 qualities a run of seven good answers dragged ``mu`` and the trend down,
  and the return to the usual bad answers then read as a new task (10 resets in 190 stationary
  10,000-event runs over p = 0.05 ... 0.95, 2 with the limit; every loss stream's F1 unchanged),
  and one upward residual counts at most ``CV`` sigmas in ``sigma^2`` (a switch the detector missed must not blind it to the next ones). While
  ``sigma^2`` is still a plain mean of few squares and the CUSUM already holds evidence of a
  rise (``S > S_RISE``), the limit is ``CV_RISE``: a new task's first high losses enter the
  reference a few steps before the CUSUM can fire, and there one 4-sigma residual used to
  widen sigma by half and blind the detector to that switch and, in a row of 25-batch
  tasks, to the next ones (bench boundaries, noise 0.4: F1 0.54 -> 0.71).
  ``sigma`` is floored at 0.05 and at 10% of ``min(|mu|, LEVEL_CAP)``: the loop's losses
  are ``1 - q_eff`` on the quality scale (at most 1), where a smaller spread is no spread
  at all; a training loss above 1 (cross-entropy) has no such floor beyond 0.1.
  It is also floored at ``SLOW`` x the same spread averaged over the whole task (rate
  ``1/n``, at least ``RATE_SLOW``): on feedback where bad answers are rare (Bernoulli 0.9
  / 0.95 qualities) the EMA forgot the spread during a long run of good answers, and then
  three bad ones in a row looked like a new task (bench boundaries: 7 of 160 stationary
  10,000-event runs reset the adapter, 3 with the floor, the F1 of every loss stream unchanged).
- **Trend**: a training loss falls within a task, and the delayed EMA lags above it (by
  ``DELAY + 1 + LAG`` times the slope), which hid short tasks' switches (a new task's jump
  measured from a level the loss had already left). ``trend`` is an EMA (rate
  ``RATE_TREND``) of the reference's own per-step moves; the losses are tested against the
  forecast ``f = mu + max(h T, -TREND_CAP sigma)`` with ``T = min(trend + TREND_SHRINK
  sigma, 0)`` and ``h = DELAY + 1 + LAG`` steps. Only a falling trend counts (a rise is what
  is tested), it must exceed ``TREND_SHRINK`` sigmas per step (the trend's noise on
  stationary feedback) and it lowers the forecast by at most ``TREND_CAP`` sigmas (a
  flattening curve must not be forecast below its floor).
- **When**: no loss is tested until the reference holds ``TEST_FROM`` losses (twelve; sixteen
  losses after a reset). A spread seeded from four losses can be far too small: a feedback
  stream that began with three perfect answers had sigma at its floor, and three bad answers
  in a row then passed the jump rule (bench boundaries: 3 of 480 stationary runs on other
  seeds reset the adapter in their first 15 events that way).
- **Statistic**: ``S = max(0, S + min((loss - f - a) / sigma, CLIP))`` with the allowance
  ``a = max(K sigma, REL min(|mu|, LEVEL_CAP))``: a rise has to exceed half a sigma and a
  quarter of the loss level (counted up to 1, as the floor) to count, and one loss adds at most CLIP. A boundary is ``S > H`` (at least
  four losses of evidence); the detector then restarts on the new task.
- **Jump rule** (a Shewhart limit beside the CUSUM, as in combined Shewhart-CUSUM
  schemes): ``JUMP_N`` losses in a row above ``f + JUMP_Z sigma`` are a boundary at once.
  A new task's loss often starts far above the old level and falls within a few batches,
  before the CUSUM has its evidence (short tasks). Where single jumps are common (bad
  answers among good ones: a Bernoulli 0.95 quality puts one loss in twenty near the
  limit) three in a row are not rare (1 in 8,000 losses), so the run must be as long as
  makes it a ``JUMP_P`` event at the task's rate of losses above ``mu + EXCEED_Z sigma``
  (a frequency with ``EXCEED_PRIOR`` pseudo-losses that never jumped): 3 on Gaussian
  noise, 5 at p = 0.95. Then ``CONFIRM`` more losses must stand ``CONFIRM_Z`` sigmas above the
  forecast: a new task's loss stays up for a while, an outage's does not (three zero qualities
  in good feedback, then a usual answer, reset the adapter at every outage: 78 of 80 in
  ``bench boundaries --switch-worlds 8``, 14 with the confirming loss; no judged F1 moved).

- **Level shift** (a slow test beside the CUSUM): the reference follows a rise within a few
  losses, which keeps false alarms down but let a lasting rise smaller than the allowance go
  unseen (answer quality from 0.7 to 0.5, even without noise). So an EMA of the loss over about
  ``1/SHIFT_FAST`` losses is also compared with one over about ``1/SHIFT_SLOW``: a boundary when
  it is above by ``SHIFT_Z`` standard errors (the slow EMA's variance, both EMAs' windows) and by
  at least ``SHIFT_MIN`` on the loss scale, once ``SHIFT_FROM`` losses have been seen since the
  last restart. Its windows are longer than a 25-batch task, so it never acts there; on feedback
  it found 326 of 400 lasting drops that the CUSUM found 159 of, with no reset added over 900
  stationary runs of 45 quality shapes (``learnstream bench boundaries --wide``).
  The losses' variance for its standard errors is an EMA (over the slow window) of their squared
  distance from the fast EMA, the local level (times ``1 - SHIFT_FAST / 2``, taking out the fast
  EMA's own variance). It was measured around the slow EMA, whose lag after a level change stayed
  in it for hundreds of losses: in a stream alternating between two quality levels every 500 events
  only the first drop was found (Bernoulli 0.8 -> 0.4: 53 of 200 drops in 20 runs; now 140, 0.9 -> 0.5:
  95 -> 168), and ``--wide``'s lasting drops 249 -> 261 of 304, with no stationary reset added.
  The slow level also guards the CUSUM in long stationary stretches: after ``VETO_FROM`` losses
  since the last restart, a CUSUM or jump firing counts only if the newest losses (the delay line
  and this one) stand ``VETO_Z`` standard errors (of the spread, over their count) above the slow
  EMA. On feedback, a run of good answers drags the fast reference down and a cluster of bad ones
  then reads as a rise although it is not above the level of the last few hundred losses (7 of the
  14 resets of a direct-loss run of those 900; every judged F1 unchanged, since a 25-batch task never
  runs that long).

- **Autocorrelated losses**: the level-shift test's and the level guard's standard errors assume
  independent losses. Qualities that wander (an AR(1) around 0.7, sd 0.15, lag-1 correlation 0.5) or
  follow a cycle (a daily one of amplitude 0.1 and period 200 events) made the fast EMA's excursions
  read as shifts: 2-5 resets per 10,000 stationary AR(1) events, 53 in 8 cycle runs (now 0 and 1; on
  other seeds 249 -> 69 resets in 40 AR(1) runs, the rest the CUSUM's). So the detector
  keeps the losses' lag-1 autocorrelation around the fast EMA (EMAs over about 1/``RATE_AC`` losses,
  shrunk towards 0 over the first ``AC_PRIOR``, at most ``AC_MAX``, never below 0; kept across
  restarts: it belongs to the stream, not to a task) and widens both standard errors by what an AR(1)
  with that correlation adds: an EMA of rate ``a`` varies ``(1 + (1-a) rho) / (1 - (1-a) rho)`` times
  more, a mean of ``k`` losses ``1 + 2 sum (1 - j/k) rho^j`` times. A lasting shift must not be learned
  as correlation: the estimate learns only while the two EMAs are within ``AC_GATE`` standard errors,
  and a product counts each residual at most ``AC_CLIP`` spreads (in a quiet stream a 0.2 drop is ten
  spreads: without one of the guards, 9 of 12 alternating drops were found within 50 events, all 12 with
  both). The price: slower on some real drops in noisy feedback (``--wide``: 183 of 228 found within
  50 events, 191 before) and a lower recall in the hardest switch worlds.
  A task is not a correlation: the estimate learns only from ``AC_FROM`` losses after a restart on (a
  new task's falling curve around the lagging fast EMA read as 0.3-0.7), and each product waits
  ``AC_WAIT`` losses, so those still waiting at a firing (the new task's first losses) are dropped
  (without the wait a switch's jump read as 0.2-0.45). On loss curves with task switches it stays
  below 0.08. With an estimate that clean the CUSUM is widened too: its increments are divided by the
  long-run factor ``sqrt((1 + r) / (1 - r))`` of ``r``, the correlation above ``AC_DEAD`` rescaled to
  0..1. Qualities correlated at 0.9 (excursions tens of events long) reset the adapter 111 times per
  10,000 events before, 14 now; at 0.5, 69 -> 36 times in 40 runs (bench/README, thirty-fourth
  session). The dead zone keeps it off where missed switches leave a small estimate (0-0.18 in the
  noisiest ``--switch-worlds``, where their mean F1 fell by 0.003-0.008); widening by the earlier
  estimate, learned from every loss, had cut a judged short-task F1 from 0.93 to 0.59. No judged F1 moved.

- **Frequent switches** (a learned hazard): H is set for streams that may never switch, where it
  must hold over tens of thousands of losses. Where tasks switch often, a switch is likely and the
  false-alarm budget per switch is what matters, so after a task of at most ``GAP`` losses (from one
  firing to the next) the first ``WINDOW`` losses of the next task are tested at ``H_FREQUENT``. A
  stationary stream never gets there: it needs a firing at H, then the next within ``GAP`` losses.
  Noisy 25-batch tasks were the two judged cells below F1 0.9 (noise 0.4: 0.71 -> 0.97; the same
  curves as feedback qualities: 0.66 -> 0.93), because one missed switch widened sigma and the next
  several went unseen at H; stationary resets unchanged (0 of 27 judged runs, 7 of 900 ``--wide``).
  The window stops at 55 losses (one missed 25-batch switch and the next): in tasks of U(25, 200)
  losses a flattening curve fires at the lower threshold later on (noise 0.2, seeds 1000-1004:
  precision 0.87 with the window at 80, 0.91 at 55, 0.95 without the rule).

Measured by ``learnstream bench boundaries`` (precision, recall, F1, adapter resets on
stationary feedback; both modes).

Examples
--------
>>> det = LossCusum()
>>> fired = [det.push(0.3 + 0.01 * (i % 3)) for i in range(50)] + [det.push(2.0) for _ in range(6)]
>>> fired.index(True)
53
"""
from __future__ import annotations

import math
import struct

from workers.errors import CorruptStateError

__all__ = ("LossCusum", "CusumFiring")

DELAY = 4          # losses this recent never enter the reference
WARM = 4           # reference losses before the first test (after a reset)
RATE_MU = 0.2
RATE_VAR = 0.02
K = 0.5            # allowance in sigmas
REL = 0.25         # allowance as a fraction of the loss level
CLIP = 3.0         # one loss adds at most this
# Threshold: 10 fired on about one in five 10,000-event stationary feedback streams
# with skewed qualities (mostly 1s, or mostly 0s); 12 on none of 48 (bench boundaries).
H = 12.0
# A stream whose tasks switch often (the previous task lasted at most GAP losses) is tested at the
# lower H_FREQUENT for the first WINDOW losses of the next task (module doc, "Frequent switches").
H_FREQUENT = 7.0
GAP = 80
WINDOW = 55
FLOOR_REL = 0.1
JUMP_Z = 4.0       # the jump rule: JUMP_N losses in a row above f + JUMP_Z sigma
JUMP_N = 3
JUMP_P = 1e-6      # ... or as many as make the run this rare at the task's rate of single jumps,
CONFIRM = 1        # ... then this many losses above f + CONFIRM_Z sigma (the rise lasts: not an outage)
CONFIRM_Z = 2.0
EXCEED_Z = 3.0     # counted with a margin: losses above mu + EXCEED_Z sigma (bad answers near the limit)
EXCEED_PRIOR = 100
RATE_AC = 0.002    # the autocorrelation's EMAs (over ~500 losses)
AC_PRIOR = 100     # ... shrunk towards 0 over this many
AC_MAX = 0.95
AC_GATE = 3.0      # ... and learned only while the level-shift test's EMAs differ by at most this many errors,
AC_CLIP = 3.0      # ... from products of residuals clipped at this many of their spread,
AC_FROM = 100      # ... from this many losses after a restart on,
AC_WAIT = DELAY    # ... each product this many losses later (a restart drops those still waiting)
AC_DEAD = 0.2      # the CUSUM is widened by the autocorrelation above this
LEVEL_CAP = 1.0    # the relative floor and allowance count the level up to this (the quality scale's max)
FLOOR_ABS = 0.05
SLOW = 0.85        # sigma >= SLOW x the task-long upward spread
RATE_SLOW = 0.002
CLO = 2.0          # a loss below the reference moves it by at most RATE_MU x CLO sigmas
DROP_Z = 2.0       # a transient drop: a reference loss this many sigmas below mu ...
RETURN = 1.5       # ... whose successors in the delay line average above mu - RETURN sigmas
DROP_BASE = 0.05   # where transient drops are more common than this (task-long rate) ...
DROP_PRIOR = 100   # (counted with this many pseudo-losses that never dropped)
CLO_MIN = 0.25     # ... the downward limit shrinks in proportion, to at least this
SHIFT_FAST = 1.0 / 30    # the level-shift test: an EMA over ~30 losses ...
SHIFT_SLOW = 1.0 / 300   # ... against one over ~300 (and its variance)
SHIFT_Z = 6.0            # standard errors of their difference
SHIFT_MIN = 0.08         # and at least this much, on the loss scale
SHIFT_FROM = 100         # losses since the last restart before it tests
VETO_FROM = 500          # after this many, a CUSUM or jump firing must stand above the slow level ...
VETO_Z = 5.0             # ... by this many of its standard errors
CV = 5.0           # an upward residual counts at most CV sigmas in the spread
CV_RISE = 2.5      # ... CV_RISE while the spread is a plain mean and the CUSUM is above S_RISE
S_RISE = H / 3.0
TEST_FROM = WARM + 8   # reference losses before the first test after a (re)start (module doc)
RATE_TREND = 0.1   # the trend: an EMA of the reference's per-step moves
TREND_SHRINK = 0.1  # sigmas per step a falling trend must exceed to count
TREND_CAP = 1.0    # the trend lowers the forecast by at most this many sigmas
LAG = (1.0 - RATE_MU) / RATE_MU   # the EMA's lag behind a linear trend, in steps
_MEDIAN_STEP = 1.0 / 0.9539              # median |x_t - x_{t-1}| = 0.954 sigma for Gaussian noise

# magic, version, ring length, steps length, m, ring, steps, mu var S prev, n
_FMT_V1 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dq")
_FMT_V2 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqq")   # 2: + the run of jump losses
_FMT_V3 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq")   # 3: + the task-long spread and its count
_FMT_V4 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq2d")   # 4: + the trend and the jump rate
_FMT_V5 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq3d")   # 5: + the rate of transient drops
_FMT_V6 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq3d3dq")   # 6: + the level-shift EMAs and their count
_FMT_V7 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq3d3dqq")   # 7: + the previous task's length
_FMT_V8 = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq3d3dqq3dq")   # 8: + the stream's autocorrelation EMAs
_FMT = struct.Struct(f"<3sBqqq{DELAY}d{WARM}d4dqqdq3d3dqq3dqq{2 * AC_WAIT}d")   # 9: + the products not yet learned
_MAGIC = b"LSC"
_VERSION = 9


def _ema_factor(a: float, rho: float) -> float:
    """How much an EMA of rate ``a`` of an AR(1) series with lag-1 correlation ``rho`` varies more than
    one of independent values."""
    c = (1.0 - a) * rho
    return (1.0 + c) / (1.0 - c)


def _cusum_widening(rho: float) -> float:
    """What the CUSUM divides its increments by: the long-run standard deviation factor of an AR(1) with
    the correlation above ``AC_DEAD`` (rescaled to 0..1), 1 at or below it."""
    if rho <= AC_DEAD:
        return 1.0
    r = (rho - AC_DEAD) / (1.0 - AC_DEAD)
    return math.sqrt((1.0 + r) / (1.0 - r))


def _mean_factor(k: int, rho: float) -> float:
    """The same for a plain mean of ``k`` successive values, as a ratio of standard deviations."""
    if rho <= 0.0 or k <= 1:
        return 1.0
    return math.sqrt(1.0 + 2.0 * sum((1.0 - j / k) * rho ** j for j in range(1, k)))


class CusumFiring:
    """What one firing saw: the statistic, the reference and the loss count since the last reset."""

    __slots__ = ("statistic", "mean", "stddev", "samples")

    def __init__(self, statistic: float, mean: float, stddev: float, samples: int) -> None:
        self.statistic, self.mean, self.stddev, self.samples = statistic, mean, stddev, samples


class LossCusum:
    """One session's boundary detector over its loss stream (see the module doc)."""

    __slots__ = ("ring", "m", "mu", "var", "S", "steps", "prev", "n", "last", "jump", "var_slow", "n_slow",
                 "trend", "exceed", "drops", "fast", "slow", "slow_var", "seen", "gap", "ac_num", "ac_den",
                 "ac_prev", "ac_n", "ac_wait")

    def __init__(self) -> None:
        self.n = 0
        self.gap = 0      # losses in the previous task (from one firing to the next), 0 before the first
        # the losses' lag-1 autocorrelation around the fast EMA (kept across restarts: a property of the
        # stream, not of a task): EMAs of successive residuals' products and of their squares
        self.ac_num = self.ac_den = self.ac_prev = 0.0
        self.ac_n = 0
        self.last: CusumFiring | None = None
        self._restart()

    def _restart(self) -> None:
        self.ring: list[float] = []   # the delay line, oldest first (at most DELAY)
        self.m = 0                    # losses in the reference
        self.mu = self.var = self.S = self.prev = 0.0
        self.jump = 0
        self.trend = 0.0              # EMA of the reference's per-step moves
        self.exceed = 0.0             # how often a reference loss was a jump (task-long rate)
        self.drops = 0.0              # how often a reference loss was a transient drop (task-long rate)
        self.fast = self.slow = self.slow_var = 0.0   # the level-shift test's EMAs (module doc)
        self.seen = 0                 # losses since the last restart
        self.var_slow = 0.0           # the upward spread over the whole task, and its loss count
        self.n_slow = 0
        self.steps: list[float] = []  # |differences| of the first WARM reference losses
        self.ac_wait: list[tuple[float, float]] = []  # residual products not yet learned (a restart drops them)

    @property
    def sigma(self) -> float:
        return max(math.sqrt(self.var), SLOW * math.sqrt(self.var_slow), FLOOR_ABS, FLOOR_REL * min(abs(self.mu), LEVEL_CAP))

    def push(self, loss: float) -> bool:
        """One loss; True when it completes a boundary (the detector restarts). Non-finite: ignored."""
        if not math.isfinite(loss):
            return False
        self.n += 1
        sig = 0.0
        if self.m >= WARM:
            sig = self.sigma
        if self.m >= TEST_FROM:
            a = max(K * sig, REL * min(abs(self.mu), LEVEL_CAP))
            f = self._forecast(sig)
            self.S = max(0.0, self.S + min((loss - f - a) / (sig * _cusum_widening(self.autocorrelation)), CLIP))
            # the run, then CONFIRM losses that show it lasts (the run's length is asked only once it is long)
            run = self.jump >= JUMP_N and self.jump >= self._jump_run()
            self.jump = self.jump + 1 if loss > f + (CONFIRM_Z if run else JUMP_Z) * sig else 0
            jumped = self.jump >= JUMP_N + CONFIRM and self.jump >= self._jump_run() + CONFIRM
            if (self.S > self.threshold or jumped) and self._above_level(loss, sig):
                self.last = CusumFiring(self.S, self.mu, sig, self.n)
                self.gap, self.n = self.n, 0
                self._restart()
                return True
        self.ring.append(loss)
        if len(self.ring) > DELAY:
            old = self.ring.pop(0)
            self._reference(old, sig)   # the reference has not moved since sig was computed
        return self._shifted(loss)

    @property
    def threshold(self) -> float:
        """The CUSUM's threshold for the next loss: ``H_FREQUENT`` in the first ``WINDOW`` losses of a task
        that follows one of at most ``GAP`` losses, ``H`` otherwise (module doc)."""
        return H_FREQUENT if 0 < self.gap <= GAP and self.n <= WINDOW else H

    def _above_level(self, loss: float, sig: float) -> bool:
        """After a long stretch (``VETO_FROM`` losses since the last restart), a CUSUM or jump firing must
        also stand above the slow level: the newest losses (the delay line and this one) average more
        than ``VETO_Z`` standard errors above it (module doc)."""
        if self.seen < VETO_FROM:
            return True
        k = len(self.ring) + 1
        return (sum(self.ring) + loss) / k - self.slow > VETO_Z * sig * _mean_factor(k, self.autocorrelation) / math.sqrt(k)

    @property
    def autocorrelation(self) -> float:
        """The stream's lag-1 autocorrelation, shrunk towards 0 while few losses were seen (never below 0)."""
        if self.ac_den <= 0.0:
            return 0.0
        return min(max(self.ac_num / self.ac_den, 0.0), AC_MAX) * self.ac_n / (self.ac_n + AC_PRIOR)

    def _shifted(self, loss: float) -> bool:
        """The level-shift test (module doc): True when it fires (the detector restarts)."""
        self.seen = k = self.seen + 1
        if k == 1:
            self.fast = self.slow = loss
            return False
        d = loss - self.slow
        rho = self.autocorrelation
        se = math.sqrt(max(self.slow_var, 1e-12) * (SHIFT_FAST / (2.0 - SHIFT_FAST) * _ema_factor(SHIFT_FAST, rho)
                                                    + SHIFT_SLOW / (2.0 - SHIFT_SLOW) * _ema_factor(SHIFT_SLOW, rho)))
        # a lasting shift reads as correlation too: learned only while the fast level is near the slow one
        # and a product of residuals counts them at most AC_CLIP of their spread each (the spread itself
        # takes them whole): a jump in a quiet stream must not read as a correlation at once
        e = loss - self.fast
        lim = AC_CLIP * math.sqrt(self.ac_den) if self.ac_n >= AC_PRIOR else math.inf
        ec = min(max(e, -lim), lim)
        if k > AC_FROM and abs(self.fast - self.slow) <= AC_GATE * se:
            self.ac_wait.append((ec * self.ac_prev, e * e))
        if len(self.ac_wait) > AC_WAIT:
            prod, sq = self.ac_wait.pop(0)
            self.ac_n += 1
            ac_rate = max(RATE_AC, 1.0 / self.ac_n)
            self.ac_num += ac_rate * (prod - self.ac_num)
            self.ac_den += ac_rate * (sq - self.ac_den)
        self.ac_prev = ec
        rate = max(SHIFT_SLOW, 1.0 / k)   # a plain mean (and variance) while few
        self.slow += rate * d
        # the spread around the fast EMA, the local level (its own variance taken out): around the slow
        # one it held that EMA's lag for hundreds of losses after a level change (module doc)
        self.slow_var += rate * (e * e * (1.0 - SHIFT_FAST / 2.0) - self.slow_var)
        self.fast += max(SHIFT_FAST, 1.0 / k) * (loss - self.fast)
        if k < SHIFT_FROM:
            return False
        rise = self.fast - self.slow
        if rise <= max(SHIFT_Z * se, SHIFT_MIN):
            return False
        self.last = CusumFiring(rise / se, self.slow, math.sqrt(self.slow_var), self.n)
        self.gap, self.n = self.n, 0
        self._restart()
        return True

    def _jump_run(self) -> int:
        """Losses in a row above the jump limit that make a boundary: ``JUMP_N``, or more where single
        jumps are common (rare bad answers on good feedback) so that a run stays a ``JUMP_P`` event."""
        if self.exceed <= 0.0:
            return JUMP_N
        return max(JUMP_N, math.ceil(math.log(JUMP_P) / math.log(min(self.exceed, 0.5))))

    def _forecast(self, sig: float) -> float:
        """The reference carried forward to the loss being tested by a falling trend (module doc)."""
        if self.trend < -TREND_SHRINK * sig:
            return self.mu + max((self.trend + TREND_SHRINK * sig) * (len(self.ring) + 1 + LAG), -TREND_CAP * sig)
        return self.mu

    @property
    def forecast(self) -> float:
        """What the next loss is tested against (``mu`` until a falling trend counts)."""
        return self._forecast(self.sigma)

    def push_many(self, losses: list[float]) -> list[int]:
        """Indices of the losses that completed a boundary."""
        return [i for i, v in enumerate(losses) if self.push(v)]

    def _reference(self, v: float, sig: float) -> None:
        """Fold a loss that left the delay line into the reference (``sig``: its sigma, once warm)."""
        m = self.m
        if m == 0:
            self.mu = self.prev = v
        elif m < WARM:
            self.steps.append(abs(v - self.prev))
            self.prev = v
            self.mu += (v - self.mu) / (m + 1)
            if m + 1 == WARM:
                # the median step: one odd loss among the first must not blind the detector
                self.var = (sorted(self.steps)[len(self.steps) // 2] * _MEDIAN_STEP) ** 2
                self.steps = []
        else:
            r = v - self.mu
            # a plain mean of the first squares (the seed counts as one), then the EMA
            rate = 1.0 / (m - WARM + 2)
            cv = CV_RISE if rate > RATE_VAR and self.S > S_RISE else CV
            up2 = 2.0 * min(max(r, 0.0), cv * sig) ** 2
            self.var += max(rate, RATE_VAR) * (up2 - self.var)
            self.n_slow += 1
            self.var_slow += max(1.0 / self.n_slow, RATE_SLOW) * (up2 - self.var_slow)
            # a frequency over the task with EXCEED_PRIOR pseudo-losses that never jumped: one odd loss
            # among the first few is not a rate
            jumped = float(r > EXCEED_Z * sig)
            self.exceed += max(1.0 / (self.n_slow + EXCEED_PRIOR), RATE_SLOW) * (jumped - self.exceed)
            ring = self.ring   # the losses after v, which the delay line already holds
            dropped = float(r < -DROP_Z * sig and (not ring or sum(ring) / len(ring) > self.mu - RETURN * sig))
            self.drops += max(1.0 / (self.n_slow + DROP_PRIOR), RATE_SLOW) * (dropped - self.drops)
            clo = CLO if self.drops <= DROP_BASE else max(CLO * DROP_BASE / self.drops, CLO_MIN)
            step = RATE_MU * max(r, -clo * sig)
            self.mu += step
            self.trend += RATE_TREND * (step - self.trend)
        self.m = m + 1

    # -- bytes ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        ring = self.ring + [0.0] * (DELAY - len(self.ring))
        steps = self.steps + [0.0] * (WARM - len(self.steps))
        return _FMT.pack(_MAGIC, _VERSION, len(self.ring), len(self.steps), self.m, *ring, *steps, self.mu,
                         self.var, self.S, self.prev, self.n, self.jump, self.var_slow, self.n_slow, self.trend,
                         self.exceed, self.drops, self.fast, self.slow, self.slow_var, self.seen, self.gap,
                         self.ac_num, self.ac_den, self.ac_prev, self.ac_n, len(self.ac_wait),
                         *[v for pair in self.ac_wait for v in pair], *[0.0] * (2 * (AC_WAIT - len(self.ac_wait))))

    @classmethod
    def from_bytes(cls, data: bytes) -> LossCusum:
        # older versions: 1 before the jump rule (its run starts at 0), 2 before the task-long spread
        # (it starts empty: the floor takes effect as the reference grows again), 3 before the trend
        # (it starts flat and is learned from the next reference losses), 4 before the rate of transient
        # drops (it starts at 0: the full downward limit, as before), 5 before the level-shift test (it
        # starts again, as after a restart), 6 before the previous task's length (0: none known), 7 before the
        # autocorrelation (it is learned again, from 0)
        version = {_FMT_V1.size: 1, _FMT_V2.size: 2, _FMT_V3.size: 3, _FMT_V4.size: 4,
                   _FMT_V5.size: 5, _FMT_V6.size: 6, _FMT_V7.size: 7, _FMT_V8.size: 8}.get(len(data), _VERSION)
        fmt = {1: _FMT_V1, 2: _FMT_V2, 3: _FMT_V3, 4: _FMT_V4, 5: _FMT_V5, 6: _FMT_V6, 7: _FMT_V7,
               8: _FMT_V8}.get(version, _FMT)
        try:
            magic, stored, ring_len, steps_len, m, *rest = fmt.unpack(data)
        except struct.error:
            raise CorruptStateError(f"boundary detector state has {len(data)} bytes, expected {_FMT.size}") from None
        if (magic != _MAGIC or stored != version or not 0 <= ring_len <= DELAY
                or not 0 <= steps_len < WARM or m < 0):
            raise CorruptStateError("not a boundary detector state of this version")
        obj = cls()
        obj.ring = list(rest[:ring_len])
        obj.steps = list(rest[DELAY:DELAY + steps_len])
        obj.m = m
        base = DELAY + WARM
        obj.mu, obj.var, obj.S, obj.prev, obj.n = rest[base:base + 5]
        obj.jump = rest[base + 5] if version >= 2 else 0
        if version >= 3:
            obj.var_slow, obj.n_slow = rest[base + 6:base + 8]
        if version >= 4:
            obj.trend, obj.exceed = rest[base + 8:base + 10]
        if version >= 5:
            obj.drops = rest[base + 10]
        if version >= 6:
            obj.fast, obj.slow, obj.slow_var, obj.seen = rest[base + 11:base + 15]
        if version >= 7:
            obj.gap = rest[base + 15]
        if version >= 8:
            obj.ac_num, obj.ac_den, obj.ac_prev, obj.ac_n = rest[base + 16:base + 20]
        if version >= 9:
            waiting = rest[base + 20]
            w = rest[base + 21:base + 21 + 2 * max(waiting, 0)]
            if (not 0 <= waiting <= AC_WAIT or not all(math.isfinite(v) for v in w)
                    or any(v < 0.0 for v in w[1::2])):   # (product, square) pairs
                raise CorruptStateError("not a boundary detector state of this version")
            obj.ac_wait = [(w[2 * i], w[2 * i + 1]) for i in range(waiting)]
        if (obj.jump < 0 or obj.gap < 0 or obj.n_slow < 0 or not obj.var_slow >= 0.0 or not math.isfinite(obj.trend)
                or not 0.0 <= obj.exceed <= 1.0
                or not 0.0 <= obj.drops <= 1.0 or obj.seen < 0 or not obj.slow_var >= 0.0
                or not (math.isfinite(obj.fast) and math.isfinite(obj.slow))
                or obj.ac_n < 0 or not obj.ac_den >= 0.0 or not math.isfinite(obj.ac_den)
                or not (math.isfinite(obj.ac_num) and math.isfinite(obj.ac_prev))):
            raise CorruptStateError("not a boundary detector state of this version")
        return obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LossCusum) and other.to_bytes() == self.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"LossCusum(mu={self.mu:.4g}, trend={self.trend:.3g}, sigma={self.sigma:.4g}, S={self.S:.3g}, "
                f"reference={self.m})")
