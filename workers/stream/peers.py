"""Expel consumer-group members whose worker is gone (embedded broker only).

noida-db never expires a member that died without leaving (workers/kafka/broker_compat.py, defect
1): a SIGKILLed worker keeps its partitions while the others keep running. Kafka drops such a
member after its session timeout; here every worker does it for the broker. Each worker lists the
group's members (DescribeGroups) and reads each one's URL from faust's member metadata; a member
whose worker has not answered HTTP for ``session_timeout_s`` (any answer counts, 503 included: the
process is there) is made to leave the group on its behalf (LeaveGroup with its member id). The
broker then rebalances and the live workers take its partitions. A live worker expelled by mistake
(its HTTP port unreachable from its peers) just rejoins, as after a session timeout on Kafka.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from workers.kafka.admin import LazyAdmin

__all__ = ("DeadPeers", "expel_group_members", "http_alive", "member_url")

logger = logging.getLogger(__name__)

# One probe of a peer's /health: connection refused answers at once, a stopped process never.
_PROBE_TIMEOUT_S = 2.0


async def http_alive(url: str) -> bool:
    """True when something answers HTTP at ``url`` (any status)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)) as s:
            async with s.get(url.rstrip("/") + "/health", ssl=False) as r:
                await r.read()
                return True
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


def member_url(metadata: bytes) -> str | None:
    """The worker URL in a faust member's group metadata (None: not a faust member, or unreadable)."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    try:
        user_data = ConsumerProtocolMemberMetadata.decode(metadata).user_data
        # faust 0.15.3: PartitionAssignor.metadata, user_data = ClientMetadata as JSON (its "url")
        url = orjson.loads(user_data).get("url")
    except Exception:  # noqa: BLE001 - another client's member: never expelled
        return None
    return url if isinstance(url, str) and url else None


async def group_members(admin: Any, group: str) -> tuple[int, list[tuple[str, str | None]]]:
    """(coordinator node, [(member id, its worker URL or None)]) of every member ``group`` lists, through a
    started aiokafka admin client."""
    node = await admin.find_coordinator(group)
    (resp,) = await admin.describe_consumer_groups([group], group_coordinator_id=node)
    # groups: (error_code, group, state, protocol_type, protocol, members, ...); a member:
    # (member_id, client_id, client_host, member_metadata, member_assignment)
    return node, [(m[0], member_url(m[3])) for g in resp.groups for m in g[5]]


async def leave_group(admin: Any, node: int, group: str, member_id: str) -> None:
    """Make ``member_id`` leave ``group`` on its behalf (LeaveGroup to the coordinator ``node``)."""
    from aiokafka.protocol.group import LeaveGroupRequest

    await admin._send_request_to_node(node, LeaveGroupRequest(group, member_id))


async def expel_group_members(bootstrap: str, group: str, *,
                              alive: Callable[[str], Awaitable[bool]] = http_alive, **kafka: Any) -> list[str]:
    """Before a worker joins: make every member of ``group`` whose worker does not answer HTTP leave it
    at once (the broker kept it after a SIGKILL; a newcomer would wait for it forever); return their
    member ids. Live members stay: expelled, they kept processing their partitions until their next
    heartbeat while the newcomer, the group's only member, took every partition. A member without a URL
    in its metadata (not a learnstream worker) is expelled too: nothing can say it is alive."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    try:
        await admin.start()
        node, listed = await group_members(admin, group)
        verdicts = await asyncio.gather(*(alive(url) if url is not None else _false() for _, url in listed))
        members = [mid for (mid, _), up in zip(listed, verdicts, strict=True) if not up]
        for mid in members:
            await leave_group(admin, node, group, mid)
    finally:
        await admin.close()
    if members:
        logger.info("embedded broker: %d member(s) of group %s whose worker does not answer left on their behalf "
                    "(it never expires dead members); %d live one(s) kept", len(members), group,
                    len(listed) - len(members))
    return members


async def _false() -> bool:
    return False


class DeadPeers:
    """See the module docstring; :meth:`check` runs on a timer."""

    def __init__(self, bootstrap: str, group: str, own_url: str, dead_after_s: float, *,
                 alive: Callable[[str], Awaitable[bool]] = http_alive, clock: Callable[[], float] = time.monotonic,
                 own_member: Callable[[], str | None] = lambda: None, **kafka: Any) -> None:
        self.bootstrap, self.group, self.own_url = bootstrap, group, own_url.rstrip("/")
        self.dead_after_s, self.alive, self.clock, self.kafka = dead_after_s, alive, clock, kafka
        self.own_member = own_member  # this worker's current member id (None or "" while it joins)
        self.failing: dict[str, float] = {}  # member id -> since when its worker has not answered
        self._admin = LazyAdmin(self.bootstrap, **self.kafka)

    async def _admin_client(self) -> Any:
        return await self._admin.get()

    async def members(self) -> tuple[int, list[tuple[str, str]]]:
        """(coordinator node, [(member id, worker URL)]) of the group's faust members."""
        node, listed = await group_members(await self._admin_client(), self.group)
        return node, [(mid, url.rstrip("/")) for mid, url in listed if url is not None]

    async def _leave(self, node: int, member_id: str) -> None:
        await leave_group(await self._admin_client(), node, self.group, member_id)

    async def check(self) -> list[str]:
        """Probe every other member's worker; expel the ones silent for ``dead_after_s``, and this worker's
        own earlier member ids; return the ids expelled."""
        mine = self.own_member()
        node, members = await self.members()
        listed = {mid for mid, _ in members}
        for mid in set(self.failing) - listed:
            del self.failing[mid]
        expelled = []
        for mid, url in members:
            if url == self.own_url:
                # An earlier member id of this worker's: after "member_id not recognized" it joined again
                # with a new id, and the broker still lists the old one, whose URL answers, so nothing else
                # expels it; every rebalance then waited for it (~60 s each; an outside trial's group locked
                # up). Only while this worker's own id is known and the same before and after the listing.
                if mine and mid != mine and self.own_member() == mine:
                    await self._leave(node, mid)
                    expelled.append(mid)
                    logger.info("group %s: member %s is an earlier join of this worker (now %s); made it leave",
                                self.group, mid, mine)
                continue
            if await self.alive(url):
                self.failing.pop(mid, None)
                continue
            since = self.failing.setdefault(mid, self.clock())
            if self.clock() - since < self.dead_after_s:
                continue
            await self._leave(node, mid)
            del self.failing[mid]
            expelled.append(mid)
            logger.warning("group %s: member %s (worker %s) has not answered for %.0f s; made it leave the group "
                           "(the embedded broker never expires dead members) so its partitions move to live "
                           "workers", self.group, mid, url, self.dead_after_s)
        return expelled

    async def close(self) -> None:
        await self._admin.close()
