"""Continual-learning streams over scikit-learn's bundled digits (no download).

Shared by ``bench/continual.py`` and ``bench/drift.py`` (a leading underscore keeps
it out of ``learnstream bench``'s list).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ("Task", "digits", "permuted_digits", "split_digits", "N_TASKS")

N_TASKS = 5
_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class Task:
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 70/30 split of the 1,797 8x8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=_TEST_FRACTION, stratify=y, random_state=seed)
    return Xtr, ytr.astype(np.int32), Xte, yte.astype(np.int32)


def permuted_digits(seed: int, n_tasks: int = N_TASKS) -> list[Task]:
    """Domain-incremental: task t applies its own fixed pixel permutation (task 0: identity)."""
    Xtr, ytr, Xte, yte = digits(seed)
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n_tasks):
        perm = np.arange(Xtr.shape[1]) if t == 0 else rng.permutation(Xtr.shape[1])
        order = rng.permutation(len(Xtr))
        tasks.append(Task(f"perm{t}", Xtr[order][:, perm], ytr[order], Xte[:, perm], yte))
    return tasks


def split_digits(seed: int, n_tasks: int = N_TASKS) -> list[Task]:
    """Class-incremental: task t holds classes 2t and 2t+1; one 10-way head, no task id at test time."""
    Xtr, ytr, Xte, yte = digits(seed)
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(n_tasks):
        cls = (2 * t, 2 * t + 1)
        tr, te = np.isin(ytr, cls), np.isin(yte, cls)
        order = rng.permutation(int(tr.sum()))
        tasks.append(Task(f"classes{cls[0]}{cls[1]}", Xtr[tr][order], ytr[tr][order], Xte[te], yte[te]))
    return tasks
