from __future__ import annotations

import asyncio

import pytest

from workers.client import LearnstreamClient
from workers.errors import ValidationError


def test_client_validates_before_sending() -> None:
    c = LearnstreamClient("127.0.0.1:1")  # never started: validation must fail first
    with pytest.raises(ValidationError, match="quality"):
        asyncio.run(c.feedback("s", [0.1, 0.2], model="m", quality=1.5))
    with pytest.raises(ValidationError):
        asyncio.run(c.insert_edge("s", {"id": "a,b", "src": "x", "dst": "y", "valid_at": 1, "created_at": 1}))


def test_unstarted_client_says_how_to_start() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(LearnstreamClient("127.0.0.1:1").loss("s", 0.5))
