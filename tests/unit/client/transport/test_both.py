"""What both transports promise (sync.py and asynchronous.py), each test run over each: deadlines,
TLS and CA bundles, proxies, bounded memory, no leaked text, the same bytes on the wire."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiResponseTooLargeError,
    MaiTransientError,
)
from tests.support.connections import API_KEY
from tests.support.helpers import make_tls_files
from tests.support.hostile_answers import bomb, drip, head_then
from tests.support.servers import RawServer, http_answer
from tests.support.transports import Transport

#: A 1 s deadline must end the call long before a server's 30 s drip or hold would; 15 s of margin
#: holds on a loaded laptop (the deadline is what the code promises, not how fast it runs).
DEADLINE_BOUND = 15.0


def _exchange(transport: Transport, url: str, **kwargs: Any) -> Any:
    """One bare exchange by ``transport``'s own module (no client around it)."""
    if transport.name == "sync":
        from airflow_provider_mai.client.transport import sync

        return sync.exchange(sync.new_session("t"), url, **kwargs)
    from airflow_provider_mai.client.transport import asynchronous

    async def run() -> Any:
        session = asynchronous.new_session("t")
        try:
            return await asynchronous.exchange(session, url, **kwargs)
        finally:
            await session.aclose()

    return asyncio.run(run())


def test_transport_errors_never_quote_header_values(transport):
    from airflow_provider_mai.client.transport import TransportError

    with pytest.raises(TransportError) as info:
        _exchange(
            transport,
            "http://127.0.0.1:9/x",
            headers={"api-key": "leaky-SECRET-value\n"},
            timeout=2,
            connect_timeout=1,
            max_body=100,
        )
    assert info.value.kind == "invalid" and not info.value.sent
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value)


def test_what_the_http_libraries_would_have_said_quotes_the_key():
    # Why the test above matters: both stacks' own messages quote the value (once in the task log).
    import h11
    import requests

    with pytest.raises(requests.exceptions.InvalidHeader, match="SECRET"):
        requests.get("http://127.0.0.1:9/x", headers={"api-key": "leaky-SECRET-value\n"}, timeout=1)
    with pytest.raises(h11.LocalProtocolError, match="SECRET"):
        h11.Request(method="POST", target="/", headers=[("Host", "h"), ("api-key", "leaky-SECRET-value\n")])


def test_both_transports_send_the_same_headers_and_body(connect, emulator):
    conn_id = connect()
    for name in ("sync", "async"):
        Transport(name).send(conn_id)
    sync, asynchronous = emulator.requests
    assert sync.fields == asynchronous.fields
    ours = ("user-agent", "accept", "accept-encoding", "content-type", "content-length", "api-key")
    assert [sync.headers.get(h) for h in ours] == [asynchronous.headers.get(h) for h in ours]
    assert sync.headers["accept-encoding"] == "gzip, deflate"


# -- the connection's ca_bundle wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE ---------------------
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
    connect, tls_emulator, private_ca, system_ca_bundle_in_env, transport
):
    ca, _, _ = private_ca
    conn_id = connect(host=tls_emulator.url, extra={"ca_bundle": str(ca)})
    assert tls_emulator.url.startswith("https://127.0.0.1:")
    assert transport.send(conn_id).width == 768
    assert len(tls_emulator.requests) == 1


def test_the_environment_ca_bundle_is_trusted_without_the_extra(
    connect, tls_emulator, private_ca, monkeypatch, transport
):
    ca, _, _ = private_ca
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # as requests reads it, for both transports
    assert transport.send(connect(host=tls_emulator.url)).width == 768


def test_without_ca_bundle_tls_fails_clearly_and_is_not_retried(
    connect, tls_emulator, system_ca_bundle_in_env, transport
):
    conn_id = connect(host=tls_emulator.url)
    with pytest.raises(MaiConfigurationError, match="set the connection extra 'ca_bundle'") as info:
        transport.send(conn_id)
    assert tls_emulator.requests == []
    assert info.value.attempts == 1 and not info.value.possibly_billed


def test_an_environment_ca_bundle_that_does_not_exist_is_a_configuration_error(
    connect, tls_emulator, tmp_path, monkeypatch, transport
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    with pytest.raises(MaiConfigurationError, match="CA bundle that REQUESTS_CA_BUNDLE names") as info:
        transport.send(connect(host=tls_emulator.url))
    assert info.value.attempts == 1  # never retried: nothing can succeed until it is fixed
    assert tls_emulator.requests == []


@pytest.mark.usefixtures("system_ca_bundle_in_env")
def test_a_ca_bundle_that_does_not_vouch_is_named(connect, tls_emulator, tmp_path, transport):
    other_ca, _, _ = make_tls_files(tmp_path, "other")
    conn_id = connect(host=tls_emulator.url, extra={"ca_bundle": str(other_ca)})
    with pytest.raises(MaiConfigurationError, match="does not vouch for it"):
        transport.send(conn_id)


@pytest.fixture
def environment_proxy(monkeypatch):
    """A proxy named by the environment, answering 502 to whatever reaches it."""
    with RawServer(lambda conn, request: conn.sendall(http_answer(502, b"proxy"))) as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield proxy


def test_a_plain_http_endpoint_is_never_reached_through_an_environment_proxy(
    connect, environment_proxy, transport
):
    # A key over plain http (loopback emulators only) must not travel to a proxy in clear text.
    conn_id = connect(extra={"max_retries": 0})  # the emulator on http://127.0.0.1
    assert transport.send(conn_id).width == 768
    assert environment_proxy.requests == []


@pytest.mark.parametrize("the_transport", ["sync", "async"])
def test_a_keyless_plain_http_request_follows_the_environment_proxy(environment_proxy, the_transport):
    answer = _exchange(
        Transport(the_transport),
        "http://127.0.0.1:9/image.png",
        method="GET",
        headers={},
        timeout=5,
        connect_timeout=2,
        max_body=100,
    )
    assert answer.status == 502 and bytes(answer.body) == b"proxy"
    assert len(environment_proxy.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [head_then(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000000\r\n", b"0123456789"), bomb("gzip")],
    ids=["length-3-GB", "gzip-bomb-200-MB"],
)
def test_peak_memory_stays_flat_whatever_the_server_says(connect, answer, transport):
    with RawServer(answer) as server:
        conn_id = connect(host=server.url, extra={"max_response_mb": 2, "max_retries": 0})
        with pytest.raises(MaiResponseTooLargeError):  # once outside the measurement: imports, pools
            transport.send(conn_id)
        tracemalloc.start()
        try:
            with pytest.raises(MaiResponseTooLargeError):
                transport.send(conn_id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes"  # the cap (2 MiB), not what was claimed


def test_every_answer_stays_inside_the_deadline_even_when_the_server_never_answers(connect, transport):
    hold = threading.Event()

    def silent(conn: socket.socket, request: bytes) -> None:
        hold.wait(30)  # accepts, reads the request, says nothing

    with RawServer(silent) as server:
        conn_id = connect(host=server.url, extra={"timeout": 1, "max_retries": 0})
        started = time.monotonic()
        with pytest.raises(MaiTransientError, match="within 1 s") as info:
            transport.send(conn_id)
        elapsed = time.monotonic() - started
        hold.set()
    assert elapsed < DEADLINE_BOUND
    assert info.value.possibly_billed  # the whole request had reached the server


def test_a_connection_closed_after_the_request_without_an_answer_may_have_been_billed(connect, transport):
    def close_after_reading(conn: socket.socket, request: bytes) -> None:
        conn.close()  # RawServer has read the whole request: the service could have acted on it

    with RawServer(close_after_reading) as server:
        conn_id = connect(host=server.url, extra={"max_retries": 0})
        with pytest.raises(MaiTransientError, match="after the request was sent") as info:
            transport.send(conn_id)
    assert info.value.attempts == 1 and info.value.possibly_billed


def test_nothing_listening_is_not_billed(free_port, connect, transport):
    conn_id = connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 0})
    with pytest.raises(MaiTransientError, match="connection refused") as info:
        transport.send(conn_id)
    assert not info.value.possibly_billed


def test_the_deadline_holds_when_name_resolution_eats_it(connect, monkeypatch, transport):
    # The sync watchdog finds no socket to cut while the name resolves; the next step must stop
    # instead. The async resolver runs in a thread: the deadline stops waiting for it.
    real = socket.getaddrinfo

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(1.2)  # a resolver slower than the whole deadline
        return real(*args, **kwargs)

    with RawServer(drip("length")) as server:
        conn_id = connect(host=server.url, extra={"timeout": 1, "max_retries": 0})
        monkeypatch.setattr(socket, "getaddrinfo", slow)
        started = time.monotonic()
        with pytest.raises(MaiTransientError, match="within 1 s"):
            transport.send(conn_id)
        elapsed = time.monotonic() - started
    assert elapsed < DEADLINE_BOUND, f"took {elapsed:.1f} s"  # the drip alone would hold it for 30 s


def test_both_transports_send_an_edit_as_the_same_multipart_form(connect, emulator):
    from airflow_provider_mai.models import EditRequest
    from tests.support.helpers import make_png

    conn_id = connect()
    source = make_png(800, 800)
    request = EditRequest(source, "add a kite", deployment="mai-image-2-5")
    images = [Transport(name).send(conn_id, request) for name in ("sync", "async")]
    sync, asynchronous = emulator.requests
    assert sync.path == asynchronous.path and sync.path.endswith("/images/edits")
    assert sync.fields == asynchronous.fields and sync.fields["prompt"] == "add a kite"
    assert sync.image == asynchronous.image == source
    assert sync.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert asynchronous.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert [image.attempts for image in images] == [1, 1]


def test_a_socks_proxy_without_its_package_is_a_clear_build_error(monkeypatch, transport):
    from airflow_provider_mai.client.transport import TransportError

    for name in ("socks", "socksio"):  # as where neither SOCKS package is installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:9")
    monkeypatch.setenv("all_proxy", "socks5://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TransportError) as info:
        _exchange(
            transport,
            "http://127.0.0.1:9/image.png",
            method="GET",
            headers={},
            timeout=5,
            connect_timeout=2,
            max_body=10,
        )
    assert info.value.kind == "invalid" and not info.value.sent
