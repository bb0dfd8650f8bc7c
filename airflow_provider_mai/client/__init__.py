"""The MAI HTTP client: one set of rules, two transports, no Airflow inside (a test enforces it).

- :mod:`.settings` - a connection's fields, read and bounded (:class:`MaiSettings`).
- :mod:`.rules` - what a request looks like on the wire.
- :mod:`.answers` - what an answer means: the image, or the typed error ("possibly billed" too).
- :mod:`.retry` - which failures are retried, after how long.
- :mod:`.conversation` - one call as steps (pace, send, wait, refresh a token), with no I/O.
- :mod:`.auth`, :mod:`.pacing` - the auth header; the shared send-slot schedules of a quota.
- :mod:`.transport` - how bytes move, within bounds we chose.
- :mod:`.core` - :class:`MaiClient`, which performs the steps in a worker.
- :mod:`.async_core` - :class:`AsyncMaiClient`, which performs the same steps on an event loop.
"""

from __future__ import annotations

from airflow_provider_mai.client.async_core import AsyncMaiClient
from airflow_provider_mai.client.core import MaiClient
from airflow_provider_mai.client.settings import MaiSettings

__all__ = ["AsyncMaiClient", "MaiClient", "MaiSettings"]
