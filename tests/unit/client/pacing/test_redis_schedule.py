"""Pacing held in Redis (connection extra ``rpm_redis_conn_id``): against a real redis-server (7.x),
and against a hand-written Redis 5 (:mod:`tests.support.resp_server`) for what 7.x cannot show - a
server that refuses ``HELLO``, answers garbage, or drips its reply."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_mai.client.pacing.file_schedule import SAFETY_MARGIN, RequestPacer
from airflow_provider_mai.exceptions import MaiConfigurationError
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.helpers import (
    make_tls_files,
    reserve_redis_pacing_slots,
    slots_taken_by_processes,
    waits_of_two_generations,
)
from tests.support.resp_server import Redis5Server, array, bulk
from tests.support.servers import free_port, redis_server, running, unavailable

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


def host_schedule(folder: Path) -> RequestPacer:
    """The file schedule a Redis pacer falls back to, on a clock that stands still (so its waits
    are exact however slow the machine)."""
    return RequestPacer("e|d", 60, folder, clock=lambda: 1_000_000.0)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unreachable_redis_is_reported_once_and_asked_again_later(caplog):
    now = [0.0]
    down = pacer("e|d", 60, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", clock=lambda: now[0])
    started = time.monotonic()
    assert down.reserve() == 0  # no fallback given: unpaced
    assert down.reserve() == 0
    assert time.monotonic() - started < 1.0  # refused at once, and not asked again meanwhile
    (error,) = errors(caplog)
    assert "Pacing through Redis at redis://127.0.0.1:" in error
    assert "could not be reached (ConnectionError)" in error
    assert "Sending without pacing for 30 s" in error
    assert "429 answers are retried" in error
    assert REDIS_PASSWORD not in caplog.text
    now[0] += 31  # Redis is tried again after RETRY_REDIS_AFTER (and still fails: no second error)
    assert down.reserve() == 0
    assert len(errors(caplog)) == 1


def test_a_wrong_password_is_logged_without_the_password(redis_url, caplog):
    wrong = redis_url.replace(REDIS_PASSWORD, "not-the-password")
    assert pacer("e|d", 60, wrong).reserve() == 0
    (error,) = errors(caplog)
    assert "refused the credentials (AuthenticationError)" in error
    assert "not-the-password" not in caplog.text
    assert REDIS_PASSWORD not in caplog.text


def test_tls_redis_paces_within_the_same_budget(tmp_path):
    import shutil
    import ssl

    from airflow_provider_mai.client.pacing.redis_rules import redis_url

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    ca, cert, key = make_tls_files(tmp_path, "redis")
    port = free_port()
    command = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(tmp_path), "--tls-auth-clients", "no"]
    command += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]

    def answers() -> bool:
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"PING\r\n")
                return tls.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    with running(command, answers, "redis-server-tls"):
        url = redis_url("127.0.0.1", port, extra={"ssl": True, "ssl_ca_certs": str(ca)})
        assert url.startswith("rediss://")
        tls_pacer = pacer("e|tls", 60, url)
        assert tls_pacer.reserve() == 0
        assert tls_pacer.reserve() == pytest.approx(SAFETY_MARGIN, abs=0.05)
        assert tls_pacer.last_slot is not None


# -- a Redis 5 conversation (hand-written server) ---------------------------------------------------
def test_redis_5_is_spoken_to_in_resp2_and_paces(caplog):
    # redis-py 8 opens with HELLO 3 AUTH default <password>; Redis 5 refuses it, quoting the password.
    with Redis5Server(REDIS_PASSWORD) as server:
        first, second = pacer("e|d", 120, server.url()), pacer("e|d", 120, server.url())
        slots, waits = [], []
        for each in (first, second, first):
            waits.append(each.reserve())
            slots.append(each.last_slot)
        names = server.names()
    step = 0.5 * SAFETY_MARGIN
    assert None not in slots  # one schedule for both pacers, on the server's clock:
    assert [b - a for a, b in itertools.pairwise(slots)] == pytest.approx([step, step], abs=1e-5)
    assert waits[0] == 0 and 0 < waits[1] <= step and waits[1] < waits[2] <= 2 * step
    assert "HELLO" not in names
    assert names[0] == "AUTH"  # the password alone, as Redis 5 takes it
    assert names.count("SCRIPT") == 1  # loaded once (the first EVALSHA was answered NOSCRIPT)
    assert errors(caplog) == []
    assert REDIS_PASSWORD not in caplog.text


def test_an_acl_user_name_is_dropped_for_redis_5():
    # Redis 5 knows no user names: AUTH <user> <password> is refused, then AUTH <password> works.
    with Redis5Server(REDIS_PASSWORD) as server:
        url = server.url().replace("redis://:", "redis://mai:")
        assert pacer("e|d", 6, url).reserve() == 0
        assert pacer("e|d", 6, url).reserve() > 5  # the first one's slot was taken: 10.1 s apart
        assert server.names()[:2] == ["AUTH", "AUTH"]


def test_a_server_error_text_is_never_logged(caplog, capfd):
    # What Redis 5 answers a command it does not know: the arguments, password included.
    quoted = "-ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `default`, "
    quoted += f"`{REDIS_PASSWORD}`, \r\n"
    with Redis5Server(REDIS_PASSWORD, script_reply=quoted.encode()) as server:
        assert pacer("e|d", 60, server.url()).reserve() == 0
    (error,) = errors(caplog)
    assert "Redis answered with an error (ResponseError)" in error
    assert REDIS_PASSWORD not in caplog.text
    assert "unknown command" not in caplog.text
    assert REDIS_PASSWORD not in "".join(capfd.readouterr())


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b":5\r\n", id="an-integer"),
        pytest.param(array(array(bulk("0.0"), bulk("1"), bulk("1.0"))), id="a-nested-list"),
        pytest.param(array(bulk("0.0"), array(bulk("1")), bulk("1.0")), id="a-list-inside"),
        pytest.param(array(bulk("0.0"), bulk("1")), id="two-fields"),
        pytest.param(array(bulk("soon"), bulk("1"), bulk("1.0")), id="not-a-number"),
        pytest.param(array(bulk("nan"), bulk("1"), bulk("1.0")), id="nan"),
        pytest.param(array(bulk("-5"), bulk("1"), bulk("1.0")), id="a-negative-wait"),
        pytest.param(array(bulk("1e9"), bulk("1"), bulk("1.0")), id="a-wait-past-the-bound"),
        pytest.param(array(bulk("0.0"), bulk("yes"), bulk("1.0")), id="taken-is-not-0-or-1"),
        pytest.param(array(bulk(b"\xff\xfe"), bulk("1"), bulk("1.0")), id="not-ascii"),
        pytest.param(b"*-1\r\n", id="a-null-list"),
        pytest.param(b"$-1\r\n", id="a-null"),
        pytest.param(b"?what\r\n", id="not-resp"),
        pytest.param(b"*1\r\n" * 5000 + b":1\r\n", id="nested-5000-deep"),
        pytest.param(b"$4000000\r\n" + b"x" * 4_000_000 + b"\r\n", id="4-MB"),
    ],
)
def test_any_broken_reply_falls_back_to_the_host_schedule(reply, tmp_path, caplog):
    fallback = host_schedule(tmp_path)
    with Redis5Server(REDIS_PASSWORD, script_reply=reply) as server:
        broken = pacer("e|d", 60, server.url(), fallback=fallback)
        waits = [broken.reserve(), broken.reserve()]  # never raises: pacing never costs an image
    assert waits == pytest.approx([0, 1.0 * SAFETY_MARGIN])  # paced by the file schedule
    assert broken.last_slot is None
    (error,) = errors(caplog)
    assert "Pacing by this host's own schedule for 30 s" in error


def test_a_dripping_reply_is_cut_off_at_the_deadline(tmp_path, caplog):
    # One byte every 0.25 s: each read is quick, the conversation (about 200 bytes) would take 50 s.
    with Redis5Server(REDIS_PASSWORD, drip=0.25) as server:
        slow = pacer("e|d", 60, server.url(), timeout=0.5, fallback=host_schedule(tmp_path))
        started = time.monotonic()
        assert slow.reserve() == 0
        elapsed = time.monotonic() - started
    assert elapsed < 6.0  # the deadline is 0.5 s for the whole exchange (margin for a busy machine)
    (error,) = errors(caplog)
    assert "Redis did not answer within 0.5 s" in error


def test_redis_is_used_again_once_it_answers(tmp_path, caplog):
    now = [0.0]
    with Redis5Server(REDIS_PASSWORD, script_reply=b":1\r\n") as server:
        flaky = pacer("e|d", 60, server.url(), fallback=host_schedule(tmp_path), clock=lambda: now[0])
        assert flaky.reserve() == 0 and flaky.last_slot is None
        server.script_reply = None  # it heals; Redis is asked again after RETRY_REDIS_AFTER only
        assert flaky.reserve() == pytest.approx(SAFETY_MARGIN)  # the file schedule
        now[0] += 31
        assert flaky.reserve() == 0  # Redis's own schedule, empty so far
        assert flaky.last_slot is not None
    assert len(errors(caplog)) == 1
    assert "answers again: pacing through Redis" in caplog.text


def test_an_unusable_host_schedule_means_unpaced_said_once(tmp_path, caplog):
    (tmp_path / "not-a-folder").write_text("")
    fallback = RequestPacer("e|d", 60, tmp_path / "not-a-folder")
    down = pacer("e|d", 60, f"redis://127.0.0.1:{free_port()}/0", fallback=fallback)
    assert [down.reserve() for _ in range(3)] == [0, 0, 0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(errors(caplog)) == 1
    assert "cannot be used either" in warnings[0] and "not-a-folder" in warnings[0]


# -- the rules, with no I/O ------------------------------------------------------------------------
def test_parse_reservation_takes_exactly_the_script_reply():
    from airflow_provider_mai.client.pacing.redis_rules import BrokenReply, Reservation, parse_reservation

    assert parse_reservation([b"1.500000", b"1", b"1700000000.250000"], 60) == Reservation(1.5, 1700000000.25)
    assert parse_reservation(("60.000000", "0", "1700000060.0"), 60) == Reservation(60.0, None)
    assert parse_reservation([b"-0.000000", b"1", b"5.0"], 60).wait == 0.0
    for reply in [
        None,
        5,
        b"1.0",
        [b"1", b"1"],
        [b"1", b"1", b"1", b"1"],
        [[b"1"], b"1", b"1"],
        [b"1", b"1", b"inf"],
        [b"61", b"1", b"1"],
        [b"1", b"1", b"0"],
        [b"1" * 40, b"1", b"1"],
    ]:
        with pytest.raises(BrokenReply):
            parse_reservation(reply, 60)


def test_failures_are_described_in_our_words():
    import redis

    from airflow_provider_mai.client.pacing.redis_rules import BrokenReply, describe_failure

    secret = "AUTH default hunter2"
    assert describe_failure(redis.AuthenticationError(secret)) == "refused the credentials"
    assert describe_failure(redis.ResponseError(secret)) == "answered with an error"
    assert describe_failure(redis.exceptions.NoScriptError(secret)) == "answered with an error"
    assert describe_failure(redis.TimeoutError(secret)) == "did not answer in time"
    assert describe_failure(redis.ConnectionError(secret)) == "could not be reached"
    assert describe_failure(ConnectionRefusedError(secret)) == "could not be reached"
    assert describe_failure(BrokenReply(secret)) == "answered something that is not a send slot"
    assert describe_failure(KeyError(secret)) == "failed"


def test_the_health_rule_reports_an_outage_once_and_retries_after_a_pause():
    from airflow_provider_mai.client.pacing.redis_rules import RedisHealth

    health = RedisHealth(retry_after=30)
    assert health.use_redis(0) and not health.answered()  # healthy: nothing to say
    assert health.failed(0) is True  # an outage starts: say so
    assert not health.use_redis(29.9)
    assert health.use_redis(30)
    assert health.failed(30) is False  # still the same outage: said already
    assert not health.use_redis(59)
    assert health.fallback_failed() is True and health.fallback_failed() is False  # said once
    assert not health.fallback_usable
    assert health.answered() is True  # it ended: say so (and the host's schedule may serve again)
    assert health.use_redis(59) and not health.answered() and health.fallback_usable


def test_redis_url_from_connection_fields():
    from airflow_provider_mai.client.pacing.redis_rules import redis_url

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
    conn_id = connect(extra={"rpm": 6, "rpm_redis_conn_id": redis_conn})
    (wait,) = waits_of_two_generations(conn_id)  # the second slot is 10.1 s after the first
    assert len(emulator.requests) == 2
    assert 5 < wait <= 10 * SAFETY_MARGIN
    redis_client.select(1)  # the connection's database holds the schedule
    assert len(redis_client.keys("airflow-provider-mai:slots:*")) == 1


def test_hook_paces_by_the_host_schedule_when_redis_is_down(connect, emulator, monkeypatch, tmp_path, capfd):
    redis_conn = redis_connection(monkeypatch, f"redis://127.0.0.1:{free_port()}/0", "team_cache")
    waits: list[float] = []
    extra = {"rpm": 6, "rpm_redis_conn_id": redis_conn, "rpm_state_dir": str(tmp_path)}
    hook = MaiHook(connect("mai_campaign", extra=extra), sleep=waits.append)
    for prompt in "ab":
        hook.generate_image(prompt, width=768, height=768)
    assert [r.status for r in emulator.requests] == [200, 200]  # no image lost
    # Paced by this host's schedule: the second slot 10.1 s after the first (waits are recorded).
    assert len(waits) == 1 and 5 < waits[0] <= 10 * SAFETY_MARGIN
    out = capfd.readouterr().out  # the hook's task logger
    assert out.count("is unavailable") == 1
    assert "Pacing through Redis connection 'team_cache' (redis://127.0.0.1:" in out
    assert "Pacing by this host's own schedule" in out
    assert list(tmp_path.glob("*.slots"))  # the schedule lives where the connection said


def test_hook_against_redis_5_paces_and_never_logs_its_password(connect, emulator, monkeypatch, capfd):
    with Redis5Server(REDIS_PASSWORD) as server:
        redis_conn = redis_connection(monkeypatch, server.url())
        (wait,) = waits_of_two_generations(connect(extra={"rpm": 6, "rpm_redis_conn_id": redis_conn}))
        assert "HELLO" not in server.names()
    assert 5 < wait <= 10 * SAFETY_MARGIN
    out, err = capfd.readouterr()
    assert "Pacing deployment" in out  # the task log is what is read here
    assert "unavailable" not in out
    assert REDIS_PASSWORD not in out + err


def test_an_undefined_redis_connection_is_a_configuration_error(connect, emulator):
    hook = MaiHook(connect(extra={"rpm": 30, "rpm_redis_conn_id": "no_such_redis"}))
    with pytest.raises(MaiConfigurationError, match="'no_such_redis', which is not defined"):
        hook.generate_image("x", width=768, height=768)
    assert emulator.requests == []


# -- through the trigger (the asyncio client: the same pacers, run in a thread) --------------------
def _trigger_event(conn_id: str, tmp_path: Path) -> dict:
    import asyncio

    from airflow_provider_mai.models import GenerateRequest
    from airflow_provider_mai.triggers.mai import MaiImageTrigger

    request = GenerateRequest("paced", 768, 768, deployment="mai-image-2")
    trigger = MaiImageTrigger(
        mai_conn_id=conn_id,
        operation="generate",
        deployment=request.deployment,
        prompt=request.prompt,
        width=768,
        height=768,
        output_uri=str(tmp_path / "paced.png"),
        fingerprint=request.fingerprint,
    )

    async def first() -> dict:
        return (await anext(trigger.run())).payload

    return asyncio.run(first())


def test_trigger_paces_through_redis_when_the_connection_names_it(
    connect, emulator, monkeypatch, redis_url, redis_client, tmp_path
):
    redis_conn = redis_connection(monkeypatch, redis_url)
    event = _trigger_event(connect(extra={"rpm": 6, "rpm_redis_conn_id": redis_conn}), tmp_path)
    assert event["status"] == "success", event
    assert len(emulator.requests) == 1
    redis_client.select(1)  # the schedule the workers' hooks use, in the connection's database
    assert len(redis_client.keys("airflow-provider-mai:slots:*")) == 1


def test_trigger_with_an_undefined_redis_connection_fails_clearly(connect, emulator, tmp_path):
    event = _trigger_event(connect(extra={"rpm": 30, "rpm_redis_conn_id": "no_such_redis"}), tmp_path)
    assert event["status"] == "error" and event["error"] == "MaiConfigurationError"
    assert "'no_such_redis', which is not defined" in event["message"]
    assert emulator.requests == []
