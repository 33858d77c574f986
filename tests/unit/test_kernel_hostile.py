"""Every binding of ``workers._kernels`` called with hostile arguments: an exception, never a crash.

Each binding has a valid call (``VALID``); the test then replaces one argument at a time with
values that break size arithmetic or memory safety — sizes of 2^63 and 2^64 - 1, negatives,
NaN, wrong dtypes and shapes, empty, read-only and non-contiguous arrays, a corrupt ``meta`` —
and requires each call to return or raise TypeError/ValueError/RuntimeError/OverflowError. It
runs in a child process, so a segfault fails the test and names the call instead of killing pytest.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np

f32, i64, i32 = np.float32, np.int64, np.int32
CLEAN = (TypeError, ValueError, RuntimeError, OverflowError, MemoryError)


def _instant() -> tuple[np.ndarray, np.ndarray]:
    from workers.cores.instant import InstantState

    s = InstantState(["a", "b"], 4)
    s._room(8)  # rows for the valid calls' pushes (the arena grows with the replay buffer)
    return s._arena.copy(), s._meta.copy()


def _router() -> np.ndarray:
    from workers import _kernels as k

    return k.router_init(1, 4, 3)


def _theta(d: int = 3, h: int = 4, c: int = 2) -> np.ndarray:
    from workers import _kernels as k

    return np.zeros(k.online_n_params(d, h, c), f32)


def valid_calls() -> dict[str, object]:
    """name -> a function returning (callable, [args]) that succeeds."""
    from workers import _kernels as k

    X = np.ones((2, 3), f32)
    y = np.array([0, 1], i32)

    def att():  # noqa: ANN202
        a = k.GraphAttention(4, 2, 0, 7)
        return a.attend, [np.ones(4, f32), np.ones((2, 4), f32), np.zeros((2, 3), f32), a.initial_we()]

    return {
        "mulberry32_stream": lambda: (k.mulberry32_stream, [1, 5]),
        # a list whose items are the hostile values too (any object: converted, or None)
        "float32_from_numbers": lambda: (k.float32_from_numbers, [[1.0, 2, -0.5, 2 ** 1100]]),
        "float32_from_numbers items": lambda: (k.float32_from_numbers, [hostile_values()]),
        "float32_from_numbers int items": lambda: (k.float32_from_numbers, [[v for v in hostile_values()
                                                                              if type(v) in (int, float)]]),
        "json_number_list": lambda: (k.json_number_list, [[1.0, 2, 2 ** 64 - 1, -(2 ** 63)]]),
        "json_number_list items": lambda: (k.json_number_list, [hostile_values()]),
        "json_number_list int items": lambda: (k.json_number_list, [[v for v in hostile_values() if type(v) is int]]),
        "float64_from_numbers": lambda: (k.float64_from_numbers, [[1.0, 2, 2 ** 53, -(2 ** 53)]]),
        "float64_from_numbers items": lambda: (k.float64_from_numbers, [hostile_values()]),
        "float64_from_numbers int items": lambda: (k.float64_from_numbers, [[v for v in hostile_values()
                                                                              if type(v) is int]]),
        "instant_layout": lambda: (k.instant_layout, [4, 2]),
        "instant_hebbian": lambda: (k.instant_hebbian, [*_instant(), np.ones(4, f32), 1, 0.5]),
        "instant_hebbian_batch": lambda: (k.instant_hebbian_batch, [*_instant(), np.ones((2, 4), f32),
                                                                    np.array([0, 1], i64), np.ones(2, f32)]),
        "instant_feedback": lambda: (k.instant_feedback, [*_instant(), np.ones(4, f32), 1, 0.9, 1000]),
        "instant_feedback_batch": lambda: (k.instant_feedback_batch, [*_instant(), np.ones((2, 4), f32),
                                                                      np.array([0, 1], i64), np.ones(2, f32),
                                                                      np.array([1, 2], i64)]),
        "instant_norm": lambda: (k.instant_norm, [*_instant()]),
        "instant_replay_reads": lambda: (k.instant_replay_reads, [*_instant(), np.array([0.9, 0.1], f32),
                                                                  np.array([1, 2], i64)]),
        "adapter_forward": lambda: (k.adapter_forward, [*_instant(), np.ones((2, 4), f32)]),
        "clamp_norm": lambda: (k.clamp_norm, [np.ones(4, f32), 1.0]),
        "ewc_penalty": lambda: (k.ewc_penalty, [np.ones(3, f32), np.ones(3, f32), np.ones(3, f32), 0.5]),
        "ewc_pull": lambda: (k.ewc_pull, [np.ones(3, f32), np.ones(3, f32), np.zeros(3, f32), 0.1]),
        "fisher_ema": lambda: (k.fisher_ema, [np.ones(3, f32), np.ones(3, f32), 0.9]),
        "weighted_pick": lambda: (k.weighted_pick, [np.ones(4, f32), 3, 1]),
        "loss_window_push_many": lambda: (k.loss_window_push_many, [np.zeros(8, f32), np.zeros(2, i64),
                                                                    np.ones(3), 1e-4, 2.5, 3]),
        "GraphAttention": lambda: (k.GraphAttention, [4, 2, 0, 7]),
        "GraphAttention.attend": att,
        "GraphAttention.__setstate__": lambda: (lambda t: k.GraphAttention.__new__(k.GraphAttention).__setstate__(t),
                                                [(1, 4, 2, 2, 7)]),
        "router_layout": lambda: (k.router_layout, [4, 3]),
        "router_init": lambda: (k.router_init, [1, 4, 3]),
        "router_route": lambda: (k.router_route, [_router(), np.ones(4, f32), 3, False, None]),
        "router_forward_batch": lambda: (k.router_forward_batch, [_router(), np.ones((2, 4), f32), 3, False]),
        "router_train": lambda: (k.router_train, [_router(), np.ones(4, f32), 3, 1, 0, 0.1, False]),
        "router_train_batch": lambda: (k.router_train_batch, [_router(), np.ones((2, 4), f32), 3,
                                                              np.array([0, 1], i64), np.array([0, 1], i64),
                                                              np.full(2, 0.1, f32), False]),
        "bandit_projection": lambda: (k.bandit_projection, [7, 3, 4]),
        "bandit_features": lambda: (k.bandit_features, [np.ones((3, 4), f32), np.ones(4, f32)]),
        "bandit_route": lambda: (k.bandit_route, [np.ones((3, 4), f32), np.tile(np.eye(4), (2, 1, 1)),
                                                  np.zeros((2, 4)), np.zeros(2), np.ones(4, f32), 0.3, 1.0]),
        "router_route_learned": lambda: (k.router_route_learned, [_router(), np.ones(4, f32), 3, False, None,
                                                                  np.ones((2, 4), f32), np.tile(np.eye(3), (3, 1, 1)),
                                                                  np.zeros((3, 3)), np.zeros(3), 0.3, 1.0]),
        "bandit_update_batch": lambda: (k.bandit_update_batch, [np.ones((3, 4), f32), np.tile(np.eye(4), (2, 1, 1)),
                                                                np.zeros((2, 4)), np.zeros((2, 4)),
                                                                np.array([0, 1], i64), np.ones((2, 4), f32),
                                                                np.array([0.5, 0.2]), 0.99]),
        # its optional in-place output of each row's share (the router's novelty test)
        "bandit_update_batch shares": lambda: (k.bandit_update_batch, [
            np.ones((3, 4), f32), np.tile(np.eye(4), (2, 1, 1)), np.zeros((2, 4)), np.zeros((2, 4)),
            np.array([0, 1], i64), np.ones((2, 4), f32), np.array([0.5, 0.2]), 0.99, True, 1.0, 0.0,
            np.ones(3), np.zeros(2)]),
        "online_n_params": lambda: (k.online_n_params, [3, 4, 2]),
        "online_forward": lambda: (k.online_forward, [_theta(), X, 4, 2]),
        "online_fisher": lambda: (k.online_fisher, [_theta(), X, y, 4, 2]),
        "online_step": lambda: (k.online_step, [_theta(), np.zeros_like(_theta()), X, y, 4, 2]),
    }


def hostile_values() -> list[object]:
    ro = np.ones(4, f32)
    ro.setflags(write=False)
    big_meta = np.zeros(64, i64)
    big_meta[:] = 2**62
    return [-1, 0, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
            float("nan"), float("inf"), -1e308, None, "x", True, (), (1, 2**64 - 1, 2, 2, 7), (1, 2**62, 2**62, 1, 7),
            np.zeros(0, f32), np.zeros((2, 2), f32), np.zeros((3, 3, 3), f32), np.ones(3, np.float64),
            np.ones(4, i64), np.ones(4, i32), ro, np.ones(8, f32)[::2], np.full(4, np.nan, f32),
            np.array([2**62, -(2**62)], i64), np.array([-1, 5], i64), big_meta, np.zeros(10**6, f32)]


def run() -> int:
    """Every (binding, argument, hostile value); prints each call before making it (for a crash)."""
    calls = valid_calls()
    n = 0
    for name, make in calls.items():
        fn, args = make()
        fn(*args)  # the valid call works
        for i in range(len(args)):
            for v in hostile_values():
                fn, args = make()
                bad = list(args)
                bad[i] = v
                print(f"{name} arg {i} = {type(v).__name__} {str(v)[:40]!r}", flush=True)
                try:
                    fn(*bad)
                except CLEAN:
                    pass
                n += 1
    print(f"OK {n} hostile calls", flush=True)
    return 0


def test_every_binding_is_listed() -> None:
    from workers import _kernels as k

    public = {n for n in dir(k) if not n.startswith("_") and callable(getattr(k, n))}
    assert public <= set(valid_calls()), public - set(valid_calls())


def test_hostile_arguments_never_crash_a_binding() -> None:
    p = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=240)
    last = p.stdout.strip().splitlines()[-3:]
    assert p.returncode == 0 and last and last[-1].startswith("OK "), (
        f"exit {p.returncode}; last calls: {last}\n{p.stderr[-3000:]}")


def test_oversized_requests_are_refused_before_allocating() -> None:
    import pytest

    from workers import _kernels as k

    for fn, args in [(k.router_init, [1, 2**64 - 1, 3]), (k.router_layout, [2**63, 3]),
                     (k.instant_layout, [9007199254740993, 2]), (k.mulberry32_stream, [1, 2**62]),
                     (k.online_n_params, [2**40, 2**40, 2]), (k.GraphAttention, [4096, 2**30, 2**30, 1])]:
        with pytest.raises(ValueError, match="must be in|more than"):
            fn(*args)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    raise SystemExit(run())
