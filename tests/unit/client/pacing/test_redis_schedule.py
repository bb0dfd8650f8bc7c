"""Pacing held in Redis (connection extra ``rpm_redis_conn_id``), against a real redis-server."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator

import pytest

from airflow_provider_mai.client.pacing.file_schedule import SAFETY_MARGIN
from airflow_provider_mai.exceptions import MaiConfigurationError
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.helpers import (
    reserve_redis_pacing_slots,
    slots_taken_by_processes,
    waits_of_two_generations,
)
from tests.support.servers import free_port, redis_server, unavailable

REDIS_PASSWORD = "redis-secret-" + "r" * 24


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private redis-server (with a password) for this module's tests."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable('the redis client is not installed (pip install "airflow-provider-mai[redis]")')
    with redis_server(REDIS_PASSWORD) as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str):  # type: ignore[no-untyped-def]
    """A client of the test server, its database emptied for each test."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def pacer(key: str, rpm: float, url: str, **kwargs):  # type: ignore[no-untyped-def]
    from airflow_provider_mai.client.pacing.redis_schedule import RedisRequestPacer

    return RedisRequestPacer(key, rpm, url, **kwargs)


def test_slots_are_spaced_at_the_quota(redis_url, redis_client):
    first, second = pacer("e|d", 120, redis_url), pacer("e|d", 120, redis_url)
    started = time.monotonic()
    waits = [first.reserve(), second.reserve(), first.reserve(), second.reserve()]
    elapsed = time.monotonic() - started
    step = 0.5 * SAFETY_MARGIN
    for index, wait in enumerate(waits):  # one schedule for both pacers, on the server's clock
        assert index * step - elapsed - 0.01 <= wait <= index * step + 0.01
    ttl = redis_client.pttl(first.redis_key)
    assert 60_000 < ttl <= (4 * step + 60) * 1000  # the key outlives its last slot by a minute only


def test_an_idle_deployment_sends_at_once_and_deployments_are_apart(redis_url, redis_client):
    assert pacer("e|a", 6, redis_url).reserve() == 0
    assert pacer("e|a", 6, redis_url).reserve() == pytest.approx(10 * SAFETY_MARGIN, abs=0.05)
    assert pacer("e|b", 6, redis_url).reserve() == 0  # another deployment has its own quota


def test_separate_processes_never_get_the_same_slot(redis_url, redis_client):
    slots = slots_taken_by_processes(reserve_redis_pacing_slots, (redis_url, 600, 25))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 100
    # 600 rpm: one slot every 0.101 s on the server's clock (as handed out, to the microsecond); two
    # processes given the same slot would show a gap of 0.
    assert None not in slots
    assert min(gaps) >= 0.1 * SAFETY_MARGIN - 1e-5


def test_waits_are_bounded_and_an_overfull_schedule_is_not_extended(redis_url, redis_client, caplog):
    from airflow_provider_mai.client.pacing.file_schedule import max_wait_seconds

    slow = pacer("e|slow", 2, redis_url)  # a slot every 30.3 s; bound: 4 slots = 121.2 s
    assert max_wait_seconds(2) == pytest.approx(4 * 30 * SAFETY_MARGIN)
    assert max_wait_seconds(120) == pytest.approx(60 * SAFETY_MARGIN)  # a minute of quota
    waits = [slow.reserve() for _ in range(7)]
    assert waits[:5] == pytest.approx([i * 30 * SAFETY_MARGIN for i in range(5)], abs=0.05)
    assert waits[5:] == pytest.approx([slow.max_wait] * 2, abs=0.05)
    assert float(redis_client.get(slow.redis_key)) - time.time() <= 5 * 30 * SAFETY_MARGIN + 0.1
    assert "runs more than 121 s ahead" in caplog.text


def test_an_unreachable_redis_means_no_pacing_for_a_while_then_a_new_try(redis_url, caplog):
    now = [0.0]
    down = pacer("e|d", 60, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", clock=lambda: now[0])
    started = time.monotonic()
    assert down.reserve() == 0
    assert down.reserve() == 0
    assert time.monotonic() - started < 1.0  # refused at once, and not asked again meanwhile
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Redis pacing unavailable at redis://127.0.0.1:" in errors[0].getMessage()
    assert "429 answers are retried" in errors[0].getMessage()
    assert REDIS_PASSWORD not in caplog.text
    now[0] += 31  # Redis is tried again after RETRY_REDIS_AFTER (and still fails: no second error)
    assert down.reserve() == 0
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_a_wrong_password_is_logged_without_the_password(redis_url, caplog):
    wrong = redis_url.replace(REDIS_PASSWORD, "not-the-password")
    assert pacer("e|d", 60, wrong).reserve() == 0
    assert "AuthenticationError" in caplog.text
    assert "not-the-password" not in caplog.text
    assert REDIS_PASSWORD not in caplog.text


def test_redis_url_from_connection_fields():
    from airflow_provider_mai.client.pacing.redis_schedule import redis_url

    assert redis_url("10.0.0.5", 6380, password="p@ss/w:rd", extra={"db": "2"}) == (
        "redis://:p%40ss%2Fw%3Ard@10.0.0.5:6380/2"
    )
    assert redis_url("cache.internal", login="mai", password="x", extra={"ssl": True}) == (
        "rediss://mai:x@cache.internal:6379/0"
    )
    assert redis_url("::1", 7000) == "redis://[::1]:7000/0"
    for host, extra, message in [
        ("", {}, "needs a plain host"),
        ("redis://h", {}, "needs a plain host"),
        ("h", {"db": "one"}, "'db' must be a number"),
        ("h", {"db": -1}, "must not be negative"),
    ]:
        with pytest.raises(MaiConfigurationError, match=message):
            redis_url(host, extra=extra)


# -- through the hook ------------------------------------------------------------------------------
def redis_connection(monkeypatch: pytest.MonkeyPatch, url: str, conn_id: str = "mai_pacing_redis") -> str:
    """An Airflow Redis connection (database 1) to the server at ``url``."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    value = {"conn_type": "redis", "host": "127.0.0.1", "port": port, "password": REDIS_PASSWORD}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**value, "extra": {"db": 1}}))
    return conn_id


def test_hook_paces_through_redis_when_the_connection_names_it(
    connect, emulator, monkeypatch, redis_url, redis_client
):
    redis_conn = redis_connection(monkeypatch, redis_url)
    conn_id = connect(extra={"rpm": 30, "rpm_redis_conn_id": redis_conn})
    (wait,) = waits_of_two_generations(conn_id)  # the second slot is 2 s after the first
    assert len(emulator.requests) == 2
    assert 1.5 < wait <= 2.0 * SAFETY_MARGIN
    redis_client.select(1)  # the connection's database holds the schedule
    assert len(redis_client.keys("airflow-provider-mai:slots:*")) == 1


def test_hook_sends_unpaced_when_redis_is_down(connect, emulator, monkeypatch, redis_url, caplog):
    redis_conn = redis_connection(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    waits: list[float] = []
    hook = MaiHook(connect(extra={"rpm": 30, "rpm_redis_conn_id": redis_conn}), sleep=waits.append)
    for prompt in "ab":
        hook.generate_image(prompt, width=768, height=768)
    assert [r.status for r in emulator.requests] == [200, 200]  # no image lost
    assert waits == []
    assert "Redis pacing unavailable" in caplog.text


def test_an_undefined_redis_connection_is_a_configuration_error(connect, emulator):
    hook = MaiHook(connect(extra={"rpm": 30, "rpm_redis_conn_id": "no_such_redis"}))
    with pytest.raises(MaiConfigurationError, match="'no_such_redis', which is not defined"):
        hook.generate_image("x", width=768, height=768)
    assert emulator.requests == []
