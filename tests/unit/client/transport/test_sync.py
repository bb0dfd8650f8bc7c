"""The sync transport (client/transport/sync.py): deadlines, TLS, proxies, bounded memory, no leaked text."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiResponseTooLargeError,
    MaiTransientError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.connections import API_KEY
from tests.support.helpers import make_tls_files
from tests.support.hostile_answers import bomb, drip, head_then
from tests.support.servers import RawServer, http_answer

#: A 1 s deadline must end the call long before a server's 30 s drip or hold would; 15 s of margin
#: holds on a loaded laptop (the deadline is what the code promises, not how fast it runs).
DEADLINE_BOUND = 15.0


def test_transport_errors_never_quote_header_values():
    import requests

    from airflow_provider_mai.client.transport import TransportError
    from airflow_provider_mai.client.transport.sync import exchange, new_session

    with pytest.raises(TransportError) as info:
        exchange(
            new_session("t"),
            "http://127.0.0.1:9/x",
            headers={"api-key": "leaky-SECRET-value\n"},
            timeout=2,
            connect_timeout=1,
            max_body=100,
        )
    assert info.value.kind == "invalid"
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value)
    # What requests itself would have said (and what used to reach the task log):
    with pytest.raises(requests.exceptions.InvalidHeader, match="SECRET"):
        requests.get("http://127.0.0.1:9/x", headers={"api-key": "leaky-SECRET-value\n"}, timeout=1)


# -- 4. the connection's ca_bundle wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE ------------------
@pytest.fixture(scope="module")
def private_ca(tmp_path_factory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_emulator(private_ca):
    _, cert, key = private_ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with MaiEmulator(api_key=API_KEY, ssl_context=context) as emulator:
        yield emulator


@pytest.fixture
def system_ca_bundle_in_env(monkeypatch):
    """As on corporate images (and these machines): the environment names the system bundle."""
    system = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system)
    monkeypatch.setenv("CURL_CA_BUNDLE", system)


def test_ca_bundle_extra_wins_over_the_environment(
    connect, tls_emulator, private_ca, system_ca_bundle_in_env
):
    ca, _, _ = private_ca
    hook = MaiHook(connect(host=tls_emulator.url, extra={"ca_bundle": str(ca)}))
    assert tls_emulator.url.startswith("https://127.0.0.1:")
    assert hook.generate_image("over TLS", width=768, height=768).width == 768
    assert len(tls_emulator.requests) == 1


def test_without_ca_bundle_tls_fails_clearly_and_is_not_retried(
    connect, tls_emulator, system_ca_bundle_in_env
):
    hook = MaiHook(connect(host=tls_emulator.url))
    with pytest.raises(MaiConfigurationError, match="set the connection extra 'ca_bundle'"):
        hook.generate_image("x", width=768, height=768)
    assert tls_emulator.requests == []


@pytest.mark.usefixtures("system_ca_bundle_in_env")
def test_a_ca_bundle_that_does_not_vouch_is_named(connect, tls_emulator, tmp_path):
    other_ca, _, _ = make_tls_files(tmp_path, "other")
    hook = MaiHook(connect(host=tls_emulator.url, extra={"ca_bundle": str(other_ca)}))
    with pytest.raises(MaiConfigurationError, match="does not vouch for it"):
        hook.generate_image("x", width=768, height=768)


def test_a_plain_http_endpoint_is_never_reached_through_an_environment_proxy(connect, monkeypatch):
    # A key over plain http (loopback emulators only) must not travel to a proxy in clear text.
    with RawServer(lambda conn, request: conn.sendall(http_answer(502, b"proxy"))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        hook = MaiHook(connect(extra={"max_retries": 0}))  # the emulator on http://127.0.0.1
        assert hook.generate_image("direct", width=768, height=768).width == 768
    assert proxy.requests == []


@pytest.mark.parametrize(
    "answer",
    [head_then(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000000\r\n", b"0123456789"), bomb("gzip")],
    ids=["length-3-GB", "gzip-bomb-200-MB"],
)
def test_peak_memory_stays_flat_whatever_the_server_says(connect, answer):
    with RawServer(answer) as server:
        hook = MaiHook(connect(host=server.url, extra={"max_response_mb": 2, "max_retries": 0}))
        hook.get_conn().session  # noqa: B018 - build the session outside the measurement
        tracemalloc.start()
        try:
            with pytest.raises(MaiResponseTooLargeError):
                hook.generate_image("x", width=768, height=768)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes"  # the cap (2 MiB), not what was claimed


def test_every_answer_stays_inside_the_deadline_even_when_the_server_never_answers(connect):
    hold = threading.Event()

    def silent(conn: socket.socket, request: bytes) -> None:
        hold.wait(30)  # accepts, reads the request, says nothing

    with RawServer(silent) as server:
        conn_id = connect(host=server.url, extra={"timeout": 1, "max_retries": 0})
        started = time.monotonic()
        with pytest.raises(MaiTransientError, match="within 1 s") as info:
            MaiHook(conn_id).generate_image("x", width=768, height=768)
        elapsed = time.monotonic() - started
        hold.set()
    assert elapsed < DEADLINE_BOUND
    assert info.value.possibly_billed  # the whole request had reached the server


def _call_in_child(url: str, queue) -> None:  # type: ignore[no-untyped-def]
    from airflow_provider_mai.client import MaiClient
    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import GenerateRequest

    settings = MaiSettings.from_connection(
        "child", host=url, password="k", extra={"timeout": 1, "max_retries": 0}
    )
    started = time.monotonic()
    try:
        MaiClient(settings).send(GenerateRequest("x", 768, 768, deployment="d"))
        queue.put(("answered", 0.0))
    except MaiTransientError as exc:
        queue.put((exc.message, time.monotonic() - started))


def test_the_deadline_holds_in_a_forked_worker_process(connect):
    # Celery's prefork pool and Airflow's task runner fork: the deadline thread must exist there too.
    import multiprocessing

    with RawServer(drip("length")) as server:  # each byte in time: only the deadline can end it
        parent = MaiHook(connect(host=server.url, extra={"timeout": 0.5, "max_retries": 0}))
        with pytest.raises(MaiTransientError):  # the parent's deadline thread is running now
            parent.generate_image("x", width=768, height=768)
        queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=_call_in_child, args=(server.url, queue))
        child.start()
        message, elapsed = queue.get(timeout=40)
        child.join(timeout=30)
    assert "within 1 s" in message
    assert elapsed < DEADLINE_BOUND


def test_the_deadline_holds_when_name_resolution_eats_it(connect, monkeypatch):
    # The watchdog finds no socket to cut while the name resolves; the next step must stop instead.
    real = socket.getaddrinfo

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(1.2)  # a resolver slower than the whole deadline
        return real(*args, **kwargs)

    with RawServer(drip("length")) as server:
        conn_id = connect(host=server.url, extra={"timeout": 1, "max_retries": 0})
        monkeypatch.setattr(socket, "getaddrinfo", slow)
        started = time.monotonic()
        with pytest.raises(MaiTransientError, match="within 1 s"):
            MaiHook(conn_id).generate_image("x", width=768, height=768)
        elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_BOUND, f"took {elapsed:.1f} s"  # the drip alone would hold it for 30 s


def test_the_deadline_queue_stays_bounded_however_many_calls_finish(connect, emulator):
    from airflow_provider_mai.client.transport import sync as transport

    hook = MaiHook(connect(extra={"timeout": 3600}))  # deadlines far away: nothing expires meanwhile
    for i in range(transport._COMPACT_AT + 40):
        hook.generate_image(f"p{i}", width=768, height=768)
    assert len(transport._WATCHDOG._pending) <= transport._COMPACT_AT
