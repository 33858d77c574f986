"""workers/_kernels.pyi names exactly what the compiled module exports (regenerate it when they differ)."""
from __future__ import annotations

import ast
from pathlib import Path

import workers._kernels as k


def test_stub_matches_the_module() -> None:
    tree = ast.parse((Path(__file__).resolve().parents[2] / "workers" / "_kernels.pyi").read_text())
    stub_all = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign) and n.target.id == "__all__")
    names = {e.value for e in stub_all.elts}
    exported = {n for n in dir(k) if not n.startswith("_")}
    assert names == exported, (
        "stub out of date; regenerate: pybind11-stubgen workers._kernels -o /tmp/stubs && "
        "cp /tmp/stubs/workers/_kernels.pyi workers/")
