"""Awkward input and shared machines: secrets, TLS trust, edit inputs, output paths, billed retries.

The hostile-server matrix is in test_hostile.py; the pacing state in test_pacing.py; the emulator's
own bounds in test_emulator.py. Everything here is real: loopback servers, files, Airflow's masker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from airflow_provider_mai.emulator import Fault, MaiEmulator
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiOutputExistsError,
    MaiTransientError,
    MaiValidationError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
from airflow_provider_mai.storage import MAX_FILE_NAME_BYTES, default_file_name
from tests.conftest import API_KEY
from tests.helpers import SleepRecorder, files_in, make_png, make_tls_files, task_context
from tests.servers import RawServer, http_answer

# -- 2. secrets: a key with stray whitespace, transport texts ---------------------------------------


def test_a_key_that_cannot_be_a_header_is_refused_without_echoing_it(connect, emulator):
    secret = "sk-" + "q" * 40
    hook = MaiHook(connect(password=f"{secret}\nsecond-line"))
    ok, message = hook.test_connection()
    assert not ok
    assert "paste the key again" in message
    for form in (secret, repr(secret), secret[-12:]):
        assert form not in message
    assert emulator.requests == []


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


def test_an_entra_token_with_a_line_break_is_refused_unsent(connect, emulator):
    from azure.core.credentials import AccessToken

    class Broken:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            return AccessToken("token-SECRET\ninjected: header", int(time.time() + 3600))

    hook = MaiHook(connect("mai_entra", password=None), credential=Broken())
    with pytest.raises(MaiConfigurationError, match="cannot be sent in a header") as info:
        hook.generate_image("x", width=768, height=768)
    assert "SECRET" not in str(info.value)
    assert emulator.requests == []


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


def test_proxies_from_the_environment_keep_working(connect, monkeypatch):
    png = base64.b64encode(make_png(768, 768)).decode()
    body = json.dumps({"data": [{"b64_json": png}]}).encode()
    with RawServer(lambda conn, request: conn.sendall(http_answer(200, body))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        hook = MaiHook(connect(host="http://127.0.0.2:8799"))  # nothing listens there: only the proxy
        assert hook.generate_image("via proxy", width=768, height=768).width == 768
    (request,) = proxy.requests
    assert request.startswith(b"POST http://127.0.0.2:8799/mai/v1/images/generations HTTP/1.1")


# -- 9. edit inputs: bounded reads, no URL fetching unless the connection allows it --------------


def _edit(via: str, image, conn_id: str = "mai_default") -> None:  # type: ignore[no-untyped-def]
    if via == "hook":
        MaiHook(conn_id).edit_image(image, "brighter")
    else:
        MaiEditImageOperator(task_id="e", prompt="brighter", image=image, mai_conn_id=conn_id).execute(
            task_context("e")
        )


@pytest.mark.parametrize("via", ["hook", "operator"])
def test_an_endless_edit_input_is_read_only_up_to_the_cap(connect, emulator, via):
    connect(extra={"max_input_mb": 1})
    with pytest.raises(MaiValidationError, match="larger than 1 MB, the connection's max_input_mb"):
        _edit(via, "/dev/zero")
    assert emulator.requests == []


@pytest.mark.parametrize("via", ["hook", "operator"])
def test_a_2_gb_edit_input_is_refused_without_reading_it_whole(connect, emulator, tmp_path, via):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.write(make_png())
        handle.truncate(2 * 1024**3)  # sparse: costs no disk
    connect()
    tracemalloc.start()
    try:
        with pytest.raises(MaiValidationError, match="larger than 50 MB"):
            _edit(via, str(huge))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 120 * 1024 * 1024  # the cap (50 MB, +1 byte) and a copy, never the 2 GB
    assert emulator.requests == []


@pytest.mark.parametrize("via", ["hook", "operator"])
@pytest.mark.parametrize("url", ["http://127.0.0.2:8799/cat.png", "https://example.invalid/cat.png"])
def test_web_urls_are_not_fetched_by_default(connect, emulator, via, url):
    connect()
    with pytest.raises(MaiValidationError, match="allow_http_inputs"):
        _edit(via, url)
    with pytest.raises(MaiValidationError, match="allow_http_inputs"):
        _edit(via, {"uri": url, "b64_json": None})  # an upstream result can carry one too
    assert emulator.requests == []


def test_web_urls_are_fetched_when_the_connection_allows_it(connect, emulator):
    png = make_png(640, 480)

    def serve(conn, request):  # type: ignore[no-untyped-def]
        conn.sendall(http_answer(200, png, {"Content-Type": "image/png"}))

    with RawServer(serve) as server:
        connect(extra={"allow_http_inputs": True})
        image = MaiHook().edit_image(f"{server.url}/cat.png", "brighter")
    assert image.width > 0
    assert emulator.requests[0].image == png


def test_an_oversized_upstream_b64_json_is_refused_before_decoding(connect, emulator):
    connect(extra={"max_input_mb": 1})
    with pytest.raises(MaiValidationError, match="b64_json is larger than 1 MB"):
        _edit("hook", {"uri": None, "b64_json": "A" * (2 * 1024 * 1024)})
    assert emulator.requests == []


# -- 10-13. output paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.json", "x.JSON", "x.jpg", "x"])
def test_an_output_path_that_is_not_a_png_is_refused_before_sending(connect, emulator, tmp_path, name):
    connect()
    with pytest.raises(MaiConfigurationError, match=r"must name a \.png file"):  # a literal: at parse time
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=str(tmp_path / name))
    op = MaiGenerateImageOperator(task_id="g", prompt="p", output_path="{{ params.out }}")
    op.output_path = str(tmp_path / name)  # as rendered
    with pytest.raises(MaiConfigurationError, match=r"must name a \.png file"):
        op.execute(task_context())
    assert emulator.requests == []
    assert files_in(tmp_path) == []


def test_if_exists_fail_lets_exactly_one_of_two_racing_tasks_write(connect, tmp_path):
    # Both tasks check (nothing there), both wait for the service, both try to write: one wins.
    with MaiEmulator(api_key=API_KEY, latency=0.5) as slow:
        connect(host=slow.url)
        target = tmp_path / "hero.png"
        outcomes: dict[str, object] = {}

        def run(prompt: str) -> None:
            op = MaiGenerateImageOperator(
                task_id="g", prompt=prompt, width=768, height=768, output_path=str(target), if_exists="fail"
            )
            try:
                outcomes[prompt] = op.execute(task_context())
            except MaiOutputExistsError as exc:
                outcomes[prompt] = exc

        threads = [threading.Thread(target=run, args=(p,)) for p in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(slow.requests) == 2  # both had passed the early check
    won = [r for r in outcomes.values() if isinstance(r, dict)]
    lost = [r for r in outcomes.values() if isinstance(r, MaiOutputExistsError)]
    assert len(won) == 1 and len(lost) == 1
    assert "written by another task" in str(lost[0])
    assert hashlib.sha256(target.read_bytes()).hexdigest() == won[0]["sha256"]
    assert json.loads(target.with_suffix(".json").read_text())["prompt"] == won[0]["prompt"]
    assert files_in(tmp_path) == ["hero.json", "hero.png"]


def test_the_longest_legal_ids_give_a_short_stable_distinct_name(connect, emulator, tmp_path):
    dag_id, task_id = "d" * 250, "t" * 250
    run_id = "manual__2026-11-29T10:00:00.123456+00:00"
    name = default_file_name(dag_id, run_id, task_id, 12)
    assert len(name.encode()) <= MAX_FILE_NAME_BYTES and name.endswith(".png")
    assert name == default_file_name(dag_id, run_id, task_id, 12)
    assert name != default_file_name(dag_id, run_id, task_id, 13)
    assert name.startswith("ddddd")
    connect()
    op = MaiGenerateImageOperator(task_id="t", prompt="p", width=768, height=768, output_path=f"{tmp_path}/")
    result = op.execute(task_context(task_id, map_index=12, run_id=run_id, dag_id=dag_id))
    assert Path(result["uri"].removeprefix("file://")).name == name
    assert sorted(files_in(tmp_path)) == sorted([name, name[:-4] + ".json"])


@pytest.mark.parametrize("folder", ["what?", "a#b", "q?x=1#frag", "sp ace%20"])
def test_local_paths_with_url_characters_are_kept_literal(connect, emulator, tmp_path, folder):
    connect()
    target_folder = tmp_path / folder
    generated = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=f"{target_folder}/"
    ).execute(task_context("g"))
    (png,) = [p for p in target_folder.iterdir() if p.suffix == ".png"]
    assert generated["uri"] == f"file://{png}"
    edited = MaiEditImageOperator(
        task_id="e", prompt="blue", image=generated, output_path=f"{target_folder}/edited.png"
    ).execute(task_context("e"))
    assert (target_folder / "edited.png").exists()
    assert edited["source_image"] == generated["uri"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # nothing landed anywhere else


# -- 15. retries that may have been billed ------------------------------------------------------------


def test_a_retry_after_the_request_was_sent_is_logged_as_possibly_billed_and_counted(
    connect, emulator, tmp_path, caplog, capfd
):
    connect(extra={"timeout": 0.5})
    emulator.inject(Fault(status=None, delay=1.5))  # the service got it all, then went quiet
    op = MaiGenerateImageOperator(task_id="g", prompt="p", width=768, height=768, output_path=f"{tmp_path}/")
    op.hook = MaiHook(op.mai_conn_id, sleep=SleepRecorder())
    caplog.set_level(logging.WARNING)
    result = op.execute(task_context())
    logs = caplog.text + capfd.readouterr().out
    assert "may have billed it" in logs
    assert result["attempts"] == 2
    assert json.loads(Path(result["sidecar_uri"].removeprefix("file://")).read_text())["attempts"] == 2


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        (Fault(status=503), 1),  # reached the service: may have been billed, so not retried
        (Fault(truncate=True), 1),
        (Fault(status=429, retry_after=0), 2),  # refused before any work: retried as ever
        (Fault(status=408), 2),
    ],
    ids=["503", "cut-off-200", "429", "408"],
)
def test_retry_sent_requests_false_stops_only_the_retries_that_may_be_billed(
    connect, emulator, fault, attempts
):
    hook = MaiHook(connect(extra={"retry_sent_requests": False}), sleep=SleepRecorder())
    emulator.inject(fault)
    if attempts == 1:
        with pytest.raises(MaiTransientError, match="retry_sent_requests=false") as info:
            hook.generate_image("x", width=768, height=768)
        assert info.value.possibly_billed
    else:
        assert hook.generate_image("x", width=768, height=768).attempts == 2
    assert len(emulator.requests) == attempts


def test_a_refused_connection_is_retried_even_with_retry_sent_requests_false(connect, free_port):
    hook = MaiHook(
        connect(
            host=f"http://127.0.0.1:{free_port}", extra={"retry_sent_requests": "false", "max_retries": 2}
        ),
        sleep=SleepRecorder(),
    )
    with pytest.raises(MaiTransientError, match="nothing answered") as info:
        hook.generate_image("x", width=768, height=768)
    assert info.value.attempts == 3
    assert not info.value.possibly_billed


# -- issue 13: the connection test answers fast ----------------------------------------------------


def test_the_connection_test_of_a_dead_endpoint_answers_in_seconds(connect, free_port):
    hook = MaiHook(connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 5}))
    started = time.monotonic()
    ok, message = hook.test_connection()
    assert time.monotonic() - started < 10
    assert not ok
    assert message.startswith(f"nothing answered at http://127.0.0.1:{free_port}")


def test_the_connection_test_sends_one_request_whatever_the_retries(connect, emulator):
    emulator.inject(Fault(status=503), times=5)
    ok, message = MaiHook(connect(extra={"max_retries": 5})).test_connection()
    assert not ok and "503" in message
    assert len(emulator.requests) == 1


# -- from the hostile review -------------------------------------------------------------------------


def test_a_presigned_url_is_never_quoted_nor_recorded_with_its_signature(connect, emulator):
    connect()
    signed = "https://account.blob.example/c/cat.png?sv=2024&sig=SECRET-SIGNATURE#frag"
    with pytest.raises(MaiValidationError) as info:
        _edit("hook", signed)
    assert "SECRET" not in str(info.value) and "https://account.blob.example/c/cat.png" in str(info.value)
    png = make_png(640, 480)
    with RawServer(lambda conn, request: conn.sendall(http_answer(200, png))) as server:
        connect(extra={"allow_http_inputs": True})
        result = MaiEditImageOperator(
            task_id="e", prompt="brighter", image=f"{server.url}/cat.png?sig=SECRET-SIGNATURE"
        ).execute(task_context("e"))
    assert result["source_image"] == f"{server.url}/cat.png"
    assert b"sig=SECRET-SIGNATURE" in server.requests[0]  # sent, as the URL requires; recorded nowhere


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"seed_like": float("nan")}, "JSON values only"),
        ({"when": __import__("datetime").date(2026, 1, 1)}, "JSON values only"),
        ({"blob": "x" * 70_000}, "at most 65,536"),
    ],
    ids=["nan", "date", "huge"],
)
def test_extra_params_that_are_not_json_fail_before_sending(connect, emulator, extra, match):
    hook = MaiHook(connect())
    with pytest.raises(MaiValidationError, match=match):
        hook.generate_image("x", width=768, height=768, extra_params=extra)
    assert emulator.requests == []


@pytest.mark.parametrize("width", ["1024\u00b2", "1" * 5000, "\uff11\uff10\uff12\uff14"])
def test_sizes_that_only_look_like_numbers_are_validation_errors(connect, emulator, width):
    with pytest.raises(MaiValidationError, match="whole number"):
        MaiHook(connect()).generate_image("x", width=width, height=1024)
    assert emulator.requests == []


def test_the_services_usage_is_kept_bounded_and_numeric(connect, emulator):
    png = base64.b64encode(make_png(768, 768)).decode()
    usage = {f"count_{i}": i for i in range(1000)} | {"nested": {"a": 1}, "text": "x" * 100, "flag": True}
    emulator.inject(Fault(status=200, body={"usage": usage, "data": [{"b64_json": png}]}))
    image = MaiHook(connect()).generate_image("x", width=768, height=768)
    assert len(image.usage) == 32
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in image.usage.values())


def test_reuse_reads_at_most_the_cap_of_whatever_sits_at_the_path(connect, emulator, tmp_path):
    connect(extra={"max_response_mb": 8})
    target = tmp_path / "x.png"

    def op():  # type: ignore[no-untyped-def]
        return MaiGenerateImageOperator(
            task_id="g", prompt="p", width=768, height=768, output_path=str(target), if_exists="skip"
        )

    op().execute(task_context())
    with open(target, "r+b") as handle:
        handle.truncate(3 * 1024**3)  # replaced behind our back by something huge (sparse)
    tracemalloc.start()
    try:
        assert op().execute(task_context())["reused"] is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assert len(emulator.requests) == 2


def test_an_image_made_by_another_endpoint_is_not_reused(connect, emulator, tmp_path):
    def op():  # type: ignore[no-untyped-def]
        return MaiGenerateImageOperator(
            task_id="g",
            prompt="p",
            width=768,
            height=768,
            output_path=f"{tmp_path}/",
            naming="request",
            if_exists="skip",
        )

    with MaiEmulator(api_key=API_KEY) as other:  # e.g. CI's emulator, then the real resource
        connect(host=other.url)
        first = op().execute(task_context())
    connect()
    second = op().execute(task_context())
    assert second["uri"] == first["uri"]  # the same request, the same name...
    assert second["reused"] is False and second["endpoint"] == emulator.url  # ...but not the same service
    assert len(emulator.requests) == 1


def test_if_exists_fail_works_where_hard_links_do_not(connect, emulator, tmp_path, monkeypatch):
    import errno

    def no_links(source, target):  # type: ignore[no-untyped-def] # what a FUSE or SMB mount answers
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    connect()
    target = tmp_path / "x.png"
    result = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=str(target), if_exists="fail"
    ).execute(task_context())
    assert hashlib.sha256(target.read_bytes()).hexdigest() == result["sha256"]
    with pytest.raises(MaiOutputExistsError):
        MaiGenerateImageOperator(
            task_id="g", prompt="q", width=768, height=768, output_path=str(target), if_exists="fail"
        ).execute(task_context())
    assert files_in(tmp_path) == ["x.json", "x.png"]


def test_a_host_whose_password_holds_a_slash_is_not_echoed(connect, emulator):
    hook = MaiHook(connect("mai_userinfo", host="https://svc:Zm9v/YmFy@res.services.ai.azure.com"))
    with pytest.raises(MaiConfigurationError) as info:
        hook.generate_image("x", width=768, height=768)
    assert "Zm9v" not in str(info.value) and "YmFy" not in str(info.value)
