"""What answers mean (client/answers.py): typed errors, quoted service text, the image read from the PNG."""

from __future__ import annotations

import base64

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiBadRequestError,
    MaiContentFilterError,
    MaiError,
    MaiNotFoundError,
    MaiResponseError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.helpers import make_png


def test_size_is_read_from_the_png_when_the_service_snaps_it(hook):
    image = hook.generate_image("wide", width=1365, height=768)
    assert (image.width, image.height) == (1360, 768)


# -- permanent errors ------------------------------------------------------------------------------
def test_wrong_key_is_401_not_retried_and_not_leaked(connect, emulator):
    wrong = "wrong-" + "s" * 40
    hook = MaiHook(connect(password=wrong))
    with pytest.raises(MaiAuthenticationError, match=r"(?i)check the api key") as info:
        hook.generate_image("x")
    error = info.value
    assert error.status_code == 401
    assert isinstance(error, AirflowFailException)
    assert len(emulator.requests) == 1
    for text in (str(error), repr(error), repr(hook), repr(hook.settings)):
        assert wrong not in text


def test_unknown_deployment_is_404_naming_endpoint_and_deployment(hook, emulator):
    with pytest.raises(MaiNotFoundError) as info:
        hook.generate_image("x", model="no-such-deployment")
    assert "no-such-deployment" in str(info.value)
    assert emulator.url in str(info.value)
    assert info.value.error_code == "DeploymentNotFound"
    assert len(emulator.requests) == 1


def test_service_size_error_is_400_with_its_code(hook, emulator):
    body = {
        "error": {
            "code": "unsupported_request_value",
            "message": "Model does not support request parameter value supplied: "
            "'width' must be at least 768 pixels.",
        }
    }
    emulator.inject(Fault(status=400, body=body))
    with pytest.raises(MaiBadRequestError, match="must be at least 768") as info:
        hook.generate_image("x")
    assert info.value.error_code == "unsupported_request_value"
    assert info.value.request_id
    assert len(emulator.requests) == 1


def test_content_filter_names_the_label_and_is_not_retried(hook, emulator):
    with pytest.raises(MaiContentFilterError) as info:
        hook.generate_image("a scene with [violence]")
    error = info.value
    assert error.label == "MultiSeverity_ViolenceScore"
    assert error.error_code == "content_safety_violation"
    assert isinstance(error, AirflowFailException)
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    "error",
    [
        {"code": "content_filter", "message": "The response was filtered."},
        {"code": "contentFilter", "message": "Blocked."},
        {"code": "BadRequest", "message": "x", "innererror": {"code": "ResponsibleAIPolicyViolation"}},
    ],
)
def test_other_content_filter_codes_are_recognised(hook, emulator, error):
    emulator.inject(Fault(status=400, body={"error": error}))
    with pytest.raises(MaiContentFilterError):
        hook.generate_image("x")
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("status", [403, 404])
def test_other_permanent_statuses_are_not_retried(hook, emulator, status):
    emulator.inject(Fault(status=status), times=5)
    with pytest.raises(MaiError) as info:
        hook.generate_image("x")
    assert info.value.status_code == status
    assert isinstance(info.value, AirflowFailException)
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<html><body>502 Bad Gateway</body></html>", "not JSON"),
        ("{not json", "not JSON"),
        ({"data": []}, "no 'data'"),
        ({"created": 1}, "no 'data'"),
        ({"data": [{"url": "https://x"}]}, "b64_json"),
        ({"data": [{"b64_json": "!!!not base64!!!"}]}, "not valid base64"),
        ({"data": [{"b64_json": base64.b64encode(b"GIF89a-not-a-png").decode()}]}, "not a PNG"),
    ],
)
def test_unusable_200_bodies_are_retried_then_reported(connect, emulator, body, why):
    hook = MaiHook(connect(extra={"max_retries": 1}))
    emulator.inject(Fault(status=200, body=body), times=2)
    with pytest.raises(MaiResponseError, match=why) as info:
        hook.generate_image("x")
    assert info.value.attempts == 2
    assert len(emulator.requests) == 2


def test_unknown_success_fields_are_kept(hook, emulator):
    png = base64.b64encode(make_png(1024, 1024)).decode()
    body = {"created": 5, "num_output_tokens": 1024, "novel": {"x": 1}, "data": [{"b64_json": png}]}
    emulator.inject(Fault(status=200, body=body))
    image = hook.generate_image("x")
    assert image.response["novel"] == {"x": 1}
    assert image.usage == {"num_output_tokens": 1024}
    assert image.model == "mai-image-2-5"


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (
            Fault(status=401, body={"error": {"code": "401", "message": "Access denied."}}),
            "Access denied. Check",
        ),
        (Fault(status=404, body={"error": {"code": "404", "message": "Not here."}}), "Not here. Check"),
        (
            Fault(
                status=400,
                body={"error": {"code": "content_filter", "message": "Blocked by label 'X'."}},
            ),
            "Blocked by label 'X'. Change",
        ),
        (Fault(status=400, body={"error": {"code": "bad", "message": "Nope..."}}), "Nope. Sizes"),
    ],
)
def test_messages_quote_the_service_with_one_full_stop(hook, emulator, fault, words):
    emulator.inject(fault)
    with pytest.raises(MaiError) as info:
        hook.generate_image("x", width=768, height=768)
    assert words in str(info.value)
    assert ".." not in str(info.value)


def test_the_services_usage_is_kept_bounded_and_numeric(connect, emulator):
    png = base64.b64encode(make_png(768, 768)).decode()
    usage = {f"count_{i}": i for i in range(1000)} | {"nested": {"a": 1}, "text": "x" * 100, "flag": True}
    emulator.inject(Fault(status=200, body={"usage": usage, "data": [{"b64_json": png}]}))
    image = MaiHook(connect()).generate_image("x", width=768, height=768)
    assert len(image.usage) == 32
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in image.usage.values())


def test_a_chunk_bomb_png_from_the_service_is_a_broken_answer(connect, emulator):
    from tests.support.helpers import chunk_bomb_png

    bomb = base64.b64encode(chunk_bomb_png()).decode()
    hook = MaiHook(connect(extra={"max_retries": 0}))
    emulator.inject(Fault(status=200, body={"data": [{"b64_json": bomb}]}), times=1)
    with pytest.raises(MaiResponseError, match="more than 4,096 chunks"):
        hook.generate_image("x")
