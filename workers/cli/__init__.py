"""The command line (``learnstream``), the demo, and the helpers the demo, benchmarks and tests share
to run real worker processes (``processes``, ``http_json``, ``waiting``)."""
from __future__ import annotations

from workers.cli.main import main

__all__ = ("main",)
