"""One aiokafka admin client per worker helper, connected on first use."""
from __future__ import annotations

import asyncio
from typing import Any

from workers.kafka.clients import started

__all__ = ("LazyAdmin",)


class LazyAdmin:
    """An :class:`aiokafka.admin.AIOKafkaAdminClient` started when first asked for, so a helper that never
    needs one (no gap, no dead peer, no rewrite) never connects."""

    def __init__(self, bootstrap: str, **kafka: Any) -> None:
        self.bootstrap, self.kafka = bootstrap, kafka
        self._admin: Any = None
        self._making = asyncio.Lock()  # two first callers at once make one client, not two (one leaked)

    async def get(self) -> Any:
        async with self._making:
            if self._admin is None:
                from aiokafka.admin import AIOKafkaAdminClient

                self._admin = await started(AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.kafka))
        return self._admin

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
