"""The emulator's own behaviour, spoken to with plain requests (as any client would)."""

from __future__ import annotations

import base64
import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from airflow_provider_mai.emulator import DEFAULT_DEPLOYMENTS, Fault, MaiEmulator
from airflow_provider_mai.emulator.render import edit_size
from tests.support.connections import API_KEY
from tests.support.emulator_requests import GEN, most_in_progress, post, post_at_once
from tests.support.helpers import make_png

EDIT = "/mai/v1/images/edits"


def decode(response) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))


def test_success_body_has_the_observed_fields(emulator):
    response = post(emulator, width=1365, height=768)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"created", "model", "size", "usage", "data"}
    assert body["model"] == "MAI-Image-2.5"
    assert body["size"] == "1360x768"
    assert set(body["usage"]) == {"num_input_text_tokens", "num_input_image_tokens", "num_output_tokens"}
    assert decode(response).size == (1360, 768)
    assert response.headers["x-ms-request-id"] == response.headers["apim-request-id"]


def test_images_are_visibly_derived_from_the_prompt(emulator):
    red = decode(post(emulator, prompt="alpha")).convert("RGB")
    blue = decode(post(emulator, prompt="omega")).convert("RGB")
    again = decode(post(emulator, prompt="alpha")).convert("RGB")
    assert red.tobytes() == again.tobytes()
    assert red.getpixel((5, 5)) != blue.getpixel((5, 5))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"api-key": "wrong"}, 401),
        ({"Authorization": "Bearer any-token"}, 200),
        ({"Authorization": "Bearer "}, 401),
    ],
)
def test_auth(emulator, headers, status):
    body = {"model": "mai-image-2", "prompt": "p", "width": 768, "height": 768}
    response = requests.post(emulator.url + GEN, json=body, headers=headers, timeout=30)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "401"


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (767, 1024, "'width' must be at least 768 pixels"),
        (1024, 700, "'height' must be at least 768 pixels"),
        (1025, 1024, "at most 1048576 pixels"),
    ],
)
def test_size_rules_answer_400_with_the_observed_code(emulator, width, height, message):
    response = post(emulator, width=width, height=height)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_request_value"
    assert message in error["message"]


def test_unknown_deployment_and_path_are_404(emulator):
    assert post(emulator, model="nope").json()["error"]["code"] == "DeploymentNotFound"
    assert post(emulator, path="/mai/v1/images/variations").status_code == 404


@pytest.mark.parametrize("param", ["seed", "negative_prompt", "response_format"])
def test_parameters_the_service_refuses(emulator, param):
    response = post(emulator, **{param: 1})
    assert response.status_code == 400
    assert param in response.json()["error"]["message"]


def test_content_filter(emulator):
    response = post(emulator, prompt="Please draw [VIOLENCE] here")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_safety_violation"
    assert "MultiSeverity_ViolenceScore" in error["message"]


def edit(emulator, image: bytes, model="mai-image-2-5", mime="image/png"):
    return requests.post(
        emulator.url + EDIT,
        data={"model": model, "prompt": "make it blue"},
        files={"image": ("x", image, mime)},
        headers={"api-key": API_KEY},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((553, 311), (1360, 768)),
        ((1024, 1024), (1024, 1024)),
        ((311, 553), (768, 1360)),
        ((2048, 2048), (1024, 1024)),
    ],
)
def test_edits_keep_aspect_ratio_towards_one_megapixel(emulator, size, expected):
    response = edit(emulator, make_png(*size))
    assert response.status_code == 200
    assert decode(response).size == expected == edit_size(*size)


def test_edit_visibly_transforms_the_input(emulator):
    source = make_png(1024, 1024, colour=(250, 250, 250))
    result = decode(edit(emulator, source)).convert("RGB")
    assert result.getpixel((512, 300)) != (250, 250, 250)


def test_edits_refused_on_models_without_edits_and_for_non_images(emulator):
    for model in ("mai-image-2", "mai-image-2e"):
        response = edit(emulator, make_png(), model=model)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "OperationNotSupported"
    response = edit(emulator, b"GIF89a....", mime="image/gif")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image_format"


def test_rate_limit_is_per_deployment_over_a_sliding_minute():
    with MaiEmulator(api_key=API_KEY, rpm=2) as emulator:
        statuses = [post(emulator).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = post(emulator)
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert 0 < int(limited.headers["retry-after-ms"]) <= 60_000
        assert "rate limit" in limited.json()["error"]["message"]
        assert post(emulator, model="mai-image-2").status_code == 200  # another deployment's quota


def test_faults_apply_to_the_next_requests_in_order(emulator):
    emulator.inject(Fault(status=503, retry_after=3))
    emulator.inject(Fault(status=200, body="<html>gateway</html>"))
    first, second, third = post(emulator), post(emulator), post(emulator)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "3")
    assert second.status_code == 200 and second.text.startswith("<html>")
    assert third.status_code == 200 and third.json()["data"]
    assert [r.fault is not None for r in emulator.requests] == [True, True, False]


def test_dropped_connection_fault(emulator):
    emulator.inject(Fault(drop=True))
    with pytest.raises(requests.ConnectionError):
        post(emulator)


def test_truncated_body_fault(emulator):
    emulator.inject(Fault(truncate=True))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post(emulator)


def test_concurrent_requests_are_served_in_parallel():
    latency = 3.0
    with MaiEmulator(api_key=API_KEY, latency=latency) as emulator:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda i: post(emulator, prompt=f"p{i}", width=768, height=768).status_code, range(8)
                )
            )
        received = sorted(request.received for request in emulator.requests)
    assert statuses == [200] * 8
    # Served one after another, each request would be taken in only after the one before it had
    # waited out its latency; in parallel, all are taken in before the first answer.
    assert received[-1] - received[0] < latency


def test_health_endpoint_lists_deployments(emulator):
    body = requests.get(emulator.url + "/healthz", timeout=5).json()
    assert body["deployments"] == DEFAULT_DEPLOYMENTS


def test_unknown_model_in_deployments_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        MaiEmulator(deployments={"x": "MAI-Image-9"})


@pytest.mark.parametrize("length", ["-1", "abc", "\uff11\uff12", str(64 * 1024 * 1024 + 1)])
def test_a_request_without_a_valid_length_is_refused_unread(emulator, length):
    with socket.create_connection(("127.0.0.1", int(emulator.url.rsplit(":", 1)[1])), timeout=5) as sock:
        head = f"POST {GEN} HTTP/1.1\r\nHost: x\r\napi-key: {API_KEY}\r\nContent-Length: {length}\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 100)
        answer = sock.recv(65536)
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413"))
        sock.settimeout(5)
        while sock.recv(65536):  # the emulator closes the connection: it never reads what follows
            pass
    assert post(emulator, width=768, height=768).status_code == 200  # and goes on serving


def test_idle_connections_are_let_go_so_they_cannot_stall_the_emulator():
    with MaiEmulator(api_key=API_KEY, max_concurrency=4, idle_timeout=0.3) as emulator:
        port = int(emulator.url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        try:
            response = post(emulator, width=768, height=768)  # waits for a slot, not forever
            assert response.status_code == 200
            assert all(sock.recv(1) == b"" for sock in idle)  # each idle client was closed
        finally:
            for sock in idle:
                sock.close()


def test_latency_draws_are_repeatable_with_a_seed():
    from airflow_provider_mai.emulator.protocol import MaiProtocol

    def draws(seed: int) -> list[float]:
        protocol = MaiProtocol(latency=(0.0, 10.0), seed=seed)
        return [protocol._latency() for _ in range(5)]

    assert draws(3) == draws(3) != draws(4)


def test_connection_uri_points_an_airflow_connection_at_the_emulator(emulator):
    conn = json.loads(emulator.connection_uri())
    assert conn["host"] == emulator.url
    assert conn["password"] == API_KEY
    assert conn["extra"]["deployment"] in DEFAULT_DEPLOYMENTS


def test_fault_rate_answers_a_seeded_share_with_transient_faults(connect):
    from airflow_provider_mai.emulator.server import CHAOS_FAULTS
    from airflow_provider_mai.hooks.mai import MaiHook

    with MaiEmulator(api_key=API_KEY, fault_rate=0.3, seed=7) as chaotic:
        hook = MaiHook(connect(host=chaotic.url, extra={"max_retries": 20}), sleep=lambda seconds: None)
        for i in range(20):
            assert hook.generate_image(f"p{i}", width=768, height=768).width == 768
        faulted = [r.fault for r in chaotic.requests if r.fault is not None]
    assert 0 < len(faulted) < len(chaotic.requests)
    assert all(f in CHAOS_FAULTS for f in faulted)
    assert len(chaotic.requests) - len(faulted) == 20  # every fault was retried to a success


def test_fault_rate_must_be_a_share():
    with pytest.raises(ValueError, match="between 0 and 1"):
        MaiEmulator(fault_rate=1.5)


def test_an_edit_writes_only_in_its_own_band_never_over_the_original_caption():
    from airflow_provider_mai.emulator.render import render_edit

    source = make_png(1024, 1024, colour=(40, 90, 160))  # one flat colour: any ink shows
    with Image.open(
        io.BytesIO(render_edit(source, "a much longer edit prompt " * 6, "MAI-Image-2.5"))
    ) as image:
        picture = image.convert("RGB")
    width, height = picture.size
    band_top = height - max(130, height // 5)
    above = picture.crop((0, 0, width, band_top))
    assert len(above.getcolors(maxcolors=4) or []) == 1  # untouched: the original caption stays readable
    band = picture.crop((0, band_top, width, height))
    assert len(band.getcolors(maxcolors=100000) or []) > 2  # the label and the edit prompt are there


def test_256_connections_at_once_are_all_answered_none_reset():
    # The deferrable mode holds up to 256 requests in flight: with the default settings every one
    # is taken in and answered; none is reset by a full listen backlog.
    latency = 6.0  # all 256 arrive within ~0.2 s on a busy 2-core machine: held at once even 10x slower
    with MaiEmulator(api_key=API_KEY, latency=latency) as emulator:
        outcomes = post_at_once(emulator, [{}] * 256)
        assert outcomes == [200] * 256
        records = emulator.requests
        assert len(records) == 256
        # From the emulator's own clock: the last request arrived before the first was answered.
        assert max(r.received for r in records) < min(r.answered or 0 for r in records)
        assert most_in_progress(emulator) == 256


def test_connections_beyond_the_concurrency_wait_in_the_backlog_not_refused():
    with MaiEmulator(api_key=API_KEY, latency=0.5, max_concurrency=4, backlog=64) as emulator:
        outcomes = post_at_once(emulator, [{"prompt": f"p{i % 3}"} for i in range(24)])
        assert outcomes == [200] * 24
        assert 2 <= most_in_progress(emulator) <= 4  # overlapping, never beyond the setting


@pytest.mark.parametrize("name", ["max_concurrency", "backlog", "max_renders"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_capacity_settings_must_be_whole_numbers_of_at_least_one(name, value):
    with pytest.raises(ValueError, match=name):
        MaiEmulator(**{name: value})


def test_defaults_take_256_connections_and_say_the_kernel_cap():
    from airflow_provider_mai.emulator.server import listen_backlog_cap

    emulator = MaiEmulator()
    assert emulator.max_concurrency >= 256 and emulator.backlog >= 256 and emulator.max_renders >= 1
    cap = listen_backlog_cap()
    assert cap is None or cap > 0


def test_answers_rendered_together_cost_a_few_images_not_one_per_connection():
    # 48 answers (~2.2 MB of JSON each) come due at the same moment. Each waited out its latency
    # holding no image, only max_renders are drawn at once, and each is streamed in 64 KiB pieces
    # (the PNG comes from the render cache), so the Python heap (the emulator's and this client's,
    # which drops what it reads) stays far below one answer per connection: ~18 MB when measured,
    # where a server drawing each answer on arrival and holding it holds 48 x 2.2 MB and more.
    import tracemalloc

    count, answer_bytes = 48, 2_100_000
    with MaiEmulator(api_key=API_KEY, latency=2.0, max_renders=2) as emulator:
        assert post_at_once(emulator, [{"width": 1024, "height": 1024}]) == [200]  # warm the cache
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            outcomes = post_at_once(emulator, [{"width": 1024, "height": 1024}] * count)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert outcomes == [200] * count
        assert most_in_progress(emulator) > count // 2  # they did come due together
    assert peak - base < count // 2 * answer_bytes


def test_stop_is_prompt_while_answers_wait_for_a_render_thread():
    from tests.support.airflow_stack import wait_until

    count = 16
    with MaiEmulator(api_key=API_KEY, max_renders=1) as emulator, ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(post, emulator, prompt=f"distinct {i}") for i in range(count)]
        wait_until(
            lambda: len(emulator.requests) == count and any(r.status == 200 for r in emulator.requests),
            within=120,
            what="every request taken in and the first one drawn",
        )
        emulator.stop()  # those still waiting for the one render thread give up at once
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result().status_code)
            except requests.ConnectionError:
                outcomes.append("dropped")
    assert 200 in outcomes and "dropped" in outcomes
    assert {r.status for r in emulator.requests} == {200, 0}


def test_an_edit_whose_pixels_cannot_be_decoded_is_refused_after_its_header_was_read(emulator):
    from airflow_provider_mai.emulator.render import readable

    truncated = make_png(1024, 1024)[:200]  # a sound header, the pixel data cut off
    assert readable(truncated)
    response = edit(emulator, truncated)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image_format"
    assert emulator.requests[-1].status == 400
