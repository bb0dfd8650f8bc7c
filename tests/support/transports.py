"""Both transports behind one call, so a test matrix runs every row against each (not a copy).

``transport.send(conn_id, request, sleep=...)`` reads the connection as the hook does and sends
with :class:`~airflow_provider_mai.client.MaiClient` (``"sync"``) or
:class:`~airflow_provider_mai.client.async_core.AsyncMaiClient` in ``asyncio.run`` (``"async"``);
``sleep`` records the waits either client chose (never slept).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_mai.models import ImageRequest, MaiImage

TRANSPORTS = ("sync", "async")


@dataclass(frozen=True)
class Transport:
    """One of the two ways a request goes out: ``"sync"`` or ``"async"``."""

    name: str

    def send(
        self,
        conn_id: str,
        request: ImageRequest | None = None,
        *,
        sleep: Callable[[float], Any] | None = None,
    ) -> MaiImage:
        """Send ``request`` (default: a 768x768 generation) over the connection ``conn_id``."""
        from airflow_provider_mai.hooks.mai import MaiHook

        hook = MaiHook(conn_id)  # the connection read as the hook reads it, secrets masked
        settings = hook.settings
        request = request or hook.generate_request("a prompt", width=768, height=768)
        if self.name == "sync":
            from airflow_provider_mai.client import MaiClient

            client = MaiClient(settings, sleep=sleep or (lambda seconds: None))
            try:
                return client.send(request)
            finally:
                client.close()
        return asyncio.run(_send_async(settings, request, sleep))


async def _send_async(settings: Any, request: ImageRequest, sleep: Callable[[float], Any] | None) -> MaiImage:
    from airflow_provider_mai.client.async_core import AsyncMaiClient

    async def wait(seconds: float) -> None:
        if sleep is not None:
            sleep(seconds)

    async with AsyncMaiClient(settings, sleep=wait) as client:
        return await client.send(request)
