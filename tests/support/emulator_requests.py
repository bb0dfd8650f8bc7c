"""Plain HTTP requests to the emulator, for the emulator's own tests."""

from __future__ import annotations

import requests

from tests.support.connections import API_KEY

GEN = "/mai/v1/images/generations"


def post(emulator, path=GEN, key=API_KEY, **body):
    payload = {"model": "mai-image-2-5", "prompt": "p", "width": 1024, "height": 1024, **body}
    return requests.post(emulator.url + path, json=payload, headers={"api-key": key}, timeout=30)


def post_at_once(emulator, bodies: list[dict], timeout: float = 300.0) -> list[int | str]:
    """POST every body at once, each on its own connection (one asyncio client, as the deferrable
    mode holds requests in flight); the answers are read and dropped as they stream in.

    Returns, per body in order, the status, or the failure's kind and text (a reset, a drop...).
    """
    import asyncio

    import httpx

    async def run() -> list[int | str]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

            async def one(body: dict) -> int | str:
                payload = {"model": "mai-image-2-5", "prompt": "p", "width": 768, "height": 768, **body}
                try:
                    async with client.stream(
                        "POST", emulator.url + GEN, json=payload, headers={"api-key": API_KEY}
                    ) as response:
                        async for _ in response.aiter_raw():
                            pass
                        return response.status_code
                except httpx.HTTPError as error:
                    cause = error.__cause__ or error.__context__
                    return f"{type(error).__name__}: {error} ({cause!r})"

            return list(await asyncio.gather(*(one(body) for body in bodies)))

    return asyncio.run(run())


def most_in_progress(emulator) -> int:
    """The most requests the emulator held at one moment, from its own records (arrival to answer)."""
    events = []
    for record in emulator.requests:
        assert record.answered is not None, "a request is still unanswered"
        events += [(record.received, 1), (record.answered, -1)]
    held = most = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):  # an answer before an arrival
        held += step
        most = max(most, held)
    return most
