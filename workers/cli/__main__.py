"""``python -m workers.cli``: the same as the ``learnstream`` command."""
from __future__ import annotations

from workers.cli.main import main

raise SystemExit(main())
