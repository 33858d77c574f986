"""workers.stream.peers.DeadPeers: which members of the group a worker makes leave (embedded broker)."""
from __future__ import annotations

import asyncio

from workers.stream.peers import DeadPeers

OWN, OTHER, GONE = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"


class Peers(DeadPeers):
    """DeadPeers over a fixed member list, recording the LeaveGroups it would send."""

    def __init__(self, members: list[tuple[str, str]], mine: list[str | None], **kw: object) -> None:
        now = [0.0]
        ids = iter(mine)
        super().__init__("b:9092", "g", OWN + "/", 6.0, alive=self._alive, clock=lambda: now[0],
                         own_member=lambda: next(ids), **kw)
        self.listed, self.left, self.now = members, [], now

    async def _alive(self, url: str) -> bool:
        return url != GONE

    async def members(self) -> tuple[int, list[tuple[str, str]]]:
        return 0, self.listed

    async def _leave(self, node: int, member_id: str) -> None:
        self.left.append(member_id)


def test_an_earlier_member_id_of_this_worker_is_made_to_leave() -> None:
    """After "member_id not recognized" a worker joins again with a new id; the broker keeps listing the
    old one, whose URL (this worker's) answers, so no liveness probe ever expels it, and each rebalance
    waited for it (an outside trial's three-worker group locked up)."""
    p = Peers([("old", OWN), ("new", OWN), ("o1", OTHER)], ["new", "new"])
    assert asyncio.run(p.check()) == ["old"] and p.left == ["old"]


def test_nothing_of_its_own_is_expelled_while_its_id_is_unknown_or_changes_during_the_listing() -> None:
    for mine in (["", ""], [None, None], ["new", "newer"]):
        p = Peers([("old", OWN), ("new", OWN)], mine)
        assert asyncio.run(p.check()) == [] and p.left == [], mine


def test_a_silent_worker_is_expelled_after_the_session_timeout_and_a_live_one_never() -> None:
    p = Peers([("me", OWN), ("o1", OTHER), ("g1", GONE)], ["me"] * 4)
    assert asyncio.run(p.check()) == []  # silent since now
    p.now[0] = 7.0
    assert asyncio.run(p.check()) == ["g1"] and p.left == ["g1"]
