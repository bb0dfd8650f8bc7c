"""AsyncMaiClient (client/async_core.py) against the emulator: the sync client's calls, awaited.

The hostile-endpoint and fault matrices run over both clients (tests/integration); here: its own
surface - send, probe, closing, pacing and tokens off the event loop, no secret shown.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from airflow_provider_mai.client.async_core import AsyncMaiClient
from airflow_provider_mai.client.settings import MaiSettings
from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import MaiAuthenticationError, MaiBadRequestError
from airflow_provider_mai.models import GenerateRequest
from airflow_provider_mai.validation import png_size
from tests.support.connections import API_KEY
from tests.support.credentials import FakeCredential

REQUEST = GenerateRequest("a red kite", 768, 768, deployment="mai-image-2")


def _settings(emulator, **extra) -> MaiSettings:
    extra = {"deployment": "mai-image-2", "retry_base_delay": 0.01, "retry_max_delay": 0.05, **extra}
    password = extra.pop("password", API_KEY)
    return MaiSettings.from_connection("mai_async", host=emulator.url, password=password, extra=extra)


class Waits:
    """An awaitable sleep that records what the client chose to wait (never waits)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def test_send_returns_the_image_over_one_pooled_route(emulator):
    async def main():
        async with AsyncMaiClient(_settings(emulator)) as client:
            first = await client.send(REQUEST)
            second = await client.send(REQUEST)
            return first, second, len(client.session._clients)

    first, second, routes = asyncio.run(main())
    assert routes == 1  # one httpx client (one pool) for the endpoint, not one per call
    assert png_size(first.png) == (768, 768) == (second.width, second.height)
    assert first.attempts == 1 and first.deployment == "mai-image-2"
    assert len(emulator.requests) == 2
    assert emulator.requests[0].headers["user-agent"].startswith("airflow-provider-mai/")


def test_probe_returns_the_services_answer_and_never_retries(emulator):
    async def main():
        async with AsyncMaiClient(_settings(emulator)) as client:
            return await client.probe("mai-image-2")

    error = asyncio.run(main())
    assert isinstance(error, MaiBadRequestError) and error.status_code == 400  # the good outcome
    assert len(emulator.requests) == 1


def test_aclose_closes_the_pools_and_a_later_call_opens_new_ones(emulator):
    async def main():
        client = AsyncMaiClient(_settings(emulator))
        await client.send(REQUEST)
        pools = list(client.session._clients.values())
        await client.aclose()
        closed = [pool.is_closed for pool in pools]
        await client.aclose()  # twice is harmless
        again = await client.send(REQUEST)
        await client.aclose()
        return closed, again

    closed, again = asyncio.run(main())
    assert closed == [True]
    assert again.attempts == 1


def test_retries_wait_through_the_given_sleep(emulator):
    emulator.inject(Fault(status=503), times=2)
    waits = Waits()

    async def main():
        async with AsyncMaiClient(_settings(emulator), sleep=waits) as client:
            return await client.send(REQUEST)

    image = asyncio.run(main())
    assert image.attempts == 3 and len(waits.seconds) == 2
    assert len(emulator.requests) == 3


def test_pacing_takes_the_file_schedule_in_a_thread_and_waits_on_the_loop(emulator, tmp_path):
    settings = _settings(emulator, rpm=60, rpm_state_dir=str(tmp_path / "pace"))
    waits = Waits()
    threads: list[int] = []

    def factory(key: str):
        from airflow_provider_mai.client.pacing.file_schedule import RequestPacer

        pacer = RequestPacer(key, 60, settings.rpm_state_dir)
        reserve = pacer.reserve

        def recorded() -> float:
            threads.append(threading.get_ident())
            return reserve()

        pacer.reserve = recorded  # type: ignore[method-assign]
        return pacer

    async def main():
        async with AsyncMaiClient(settings, sleep=waits, pacer_factory=factory) as client:
            await client.send(REQUEST)
            await client.send(REQUEST)
            return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) == 2 and loop_thread not in threads  # the schedule's lock: never on the loop
    assert len(waits.seconds) == 1 and 0.5 < waits.seconds[0] <= 1.0  # 60 rpm: the second a second on


def test_entra_tokens_are_fetched_off_the_loop_and_refreshed_once_on_401(emulator):
    credential = FakeCredential()
    fetched_in: list[int] = []
    get_token = credential.get_token

    def recorded(*scopes, **kwargs):  # type: ignore[no-untyped-def]
        fetched_in.append(threading.get_ident())
        return get_token(*scopes, **kwargs)

    credential.get_token = recorded  # type: ignore[method-assign]
    secrets: list[str] = []
    emulator.inject(Fault(status=401))

    async def main():
        settings = _settings(emulator, password=None, auth_type="entra_id")
        async with AsyncMaiClient(settings, credential=credential, on_secret=secrets.append) as client:
            image = await client.send(REQUEST)
            return image, threading.get_ident(), repr(client)

    image, loop_thread, shown = asyncio.run(main())
    assert image.attempts == 2 and credential.calls == 2  # one fresh token after the 401
    assert loop_thread not in fetched_in
    assert secrets == [f"entra-token-1-{'t' * 60}", f"entra-token-2-{'t' * 60}"]
    assert emulator.requests[1].headers["authorization"] == f"Bearer {secrets[1]}"
    assert not any(secret in shown for secret in secrets)


def test_no_secret_in_repr_logs_or_errors(emulator, caplog):
    caplog.set_level(logging.DEBUG)
    emulator.inject(Fault(status=503))
    emulator.inject(Fault(status=401))
    client = AsyncMaiClient(_settings(emulator, max_retries=1))

    async def main():
        try:
            await client.send(REQUEST)
        finally:
            await client.aclose()

    with pytest.raises(MaiAuthenticationError) as info:
        asyncio.run(main())
    assert "retrying" in caplog.text  # the 503 was logged...
    for text in (caplog.text, str(info.value), repr(info.value), repr(client), repr(client.settings)):
        assert API_KEY not in text  # ...and the key never was


def test_many_sends_in_flight_on_one_client_all_complete(emulator):
    # The triggerer's case: one event loop holds many requests; no pool limit queues them.
    requests = [GenerateRequest(f"kite {i}", 768, 768, deployment="mai-image-2") for i in range(40)]

    async def main():
        async with AsyncMaiClient(_settings(emulator, max_retries=0)) as client:
            return await asyncio.gather(*(client.send(r) for r in requests))

    images = asyncio.run(main())
    assert [image.prompt for image in images] == [r.prompt for r in requests]
    assert all(image.attempts == 1 for image in images)
    assert len(emulator.requests) == 40
