"""One aiokafka admin client per worker helper, connected on first use."""
from __future__ import annotations

from typing import Any

__all__ = ("LazyAdmin",)


class LazyAdmin:
    """An :class:`aiokafka.admin.AIOKafkaAdminClient` started when first asked for, so a helper that never
    needs one (no gap, no dead peer, no rewrite) never connects."""

    def __init__(self, bootstrap: str, **kafka: Any) -> None:
        self.bootstrap, self.kafka = bootstrap, kafka
        self._admin: Any = None

    async def get(self) -> Any:
        if self._admin is None:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.kafka)
            try:
                await admin.start()
            except BaseException:
                await admin.close()  # its client, connected or not (the admin has no unclosed warning, the client does)
                raise
            self._admin = admin
        return self._admin

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
