from __future__ import annotations

import sys

import psutil
import pytest

from workers.stream.memory import heap_trimmer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_heap_trimmer_returns_freed_pages_between_live_blocks() -> None:
    """glibc returns only a free top of its heap by itself: ~100 MB freed under one live block stays
    resident until malloc_trim(0) gives it back."""
    trim = heap_trimmer()
    assert trim is not None
    trim()
    blocks = [bytes(2048) for _ in range(50_000)]  # malloc'd (over pymalloc's 512 B), under the mmap threshold
    keep = blocks[-1]
    ps = psutil.Process()
    del blocks
    before = ps.memory_info().rss
    assert trim() is True
    assert before - ps.memory_info().rss > 50e6, (before, ps.memory_info().rss)
    assert len(keep) == 2048
