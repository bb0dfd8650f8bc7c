"""MaiHook against the emulator over real HTTP: success paths, validation, error mapping, retries."""

from __future__ import annotations

import base64
import json
import pickle
import time
from email.utils import formatdate

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiBadRequestError,
    MaiConfigurationError,
    MaiContentFilterError,
    MaiError,
    MaiNotFoundError,
    MaiRateLimitError,
    MaiResponseError,
    MaiTransientError,
    MaiValidationError,
)
from airflow_provider_mai.hooks.mai import MaiHook, MaiImage
from airflow_provider_mai.client.settings import normalise_endpoint
from airflow_provider_mai.validation import png_size
from tests.conftest import API_KEY
from tests.helpers import SleepRecorder, make_jpeg, make_png


@pytest.fixture
def recorder() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def hook(connect, recorder) -> MaiHook:
    """A hook on the emulator whose waits (backoff, pacing) are recorded, not slept."""
    return MaiHook(connect(), sleep=recorder)


# -- success ---------------------------------------------------------------------------------------


def test_generate_returns_checked_png_with_metadata(hook, emulator):
    image = hook.generate_image("A lighthouse at dawn", width=1024, height=1024)

    assert isinstance(image, MaiImage)
    assert png_size(image.png) == (1024, 1024) == (image.width, image.height)
    assert image.deployment == "mai-image-2-5"
    assert image.model == "MAI-Image-2.5"
    assert image.prompt == "A lighthouse at dawn"
    assert image.request_id and len(image.request_id) == 36
    assert image.usage["num_output_tokens"] == 1024
    assert image.response["size"] == "1024x1024"
    assert len(image.sha256) == 64
    (sent,) = emulator.requests
    assert sent.path == "/mai/v1/images/generations"
    assert sent.headers["api-key"] == API_KEY
    assert sent.fields == {
        "model": "mai-image-2-5",
        "prompt": "A lighthouse at dawn",
        "width": 1024,
        "height": 1024,
    }


def test_repr_of_image_does_not_dump_bytes(hook):
    image = hook.generate_image("small", width=768, height=768)
    assert "png" not in repr(image).split("(", 1)[1].split(",")[0]
    assert len(repr(image)) < 500


def test_size_is_read_from_the_png_when_the_service_snaps_it(hook):
    image = hook.generate_image("wide", width=1365, height=768)
    assert (image.width, image.height) == (1360, 768)


def test_model_argument_overrides_connection_deployment(hook, emulator):
    image = hook.generate_image("x", width=768, height=768, model="mai-image-2e")
    assert image.deployment == "mai-image-2e"
    assert emulator.requests[0].deployment == "mai-image-2e"


def test_extra_params_are_merged_into_the_body(hook, emulator):
    hook.generate_image("x", width=768, height=768, extra_params={"auto_aspect_ratio": True})
    assert emulator.requests[0].fields["auto_aspect_ratio"] is True


@pytest.mark.parametrize("key", ["model", "prompt", "width", "height"])
def test_extra_params_cannot_override_validated_fields(hook, emulator, key):
    with pytest.raises(MaiValidationError, match=key):
        hook.generate_image("x", extra_params={key: 1})
    assert emulator.requests == []


def test_same_prompt_gives_same_image_and_another_prompt_differs(hook):
    first = hook.generate_image("a cat", width=768, height=768)
    again = hook.generate_image("a cat", width=768, height=768)
    other = hook.generate_image("a dog", width=768, height=768)
    assert first.sha256 == again.sha256 != other.sha256


def test_one_client_and_session_are_reused_across_calls(hook):
    client = hook.get_conn()
    session = client.session
    hook.generate_image("a", width=768, height=768)
    hook.generate_image("b", width=768, height=768)
    assert hook.get_conn() is client
    assert client.session is session


# -- edits -----------------------------------------------------------------------------------------


def test_edit_png_bytes_keeps_aspect_ratio(hook, emulator):
    image = hook.edit_image(make_png(553, 311), "add a sunset")
    assert (image.width, image.height) == (1360, 768)
    (sent,) = emulator.requests
    assert sent.path == "/mai/v1/images/edits"
    assert sent.fields["model"] == "mai-image-2-5"
    assert sent.fields["prompt"] == "add a sunset"
    assert sent.fields["image_content_type"] == "image/png"
    assert sent.image == make_png(553, 311)


def test_edit_jpeg_is_sent_as_jpeg(hook, emulator):
    hook.edit_image(make_jpeg(), "brighter")
    assert emulator.requests[0].fields["image_content_type"] == "image/jpeg"


def test_edit_accepts_path_uri_objectstoragepath_and_upstream_dict(hook, emulator, tmp_path):
    from airflow.sdk import ObjectStoragePath

    source = tmp_path / "in.png"
    source.write_bytes(make_png(1024, 1024))
    png_b64 = base64.b64encode(make_png(1024, 1024)).decode()
    for image in (
        str(source),
        source,
        f"file://{source}",
        ObjectStoragePath(f"file://{source}"),
        {"uri": f"file://{source}", "b64_json": None},
        {"uri": None, "b64_json": png_b64},
    ):
        result = hook.edit_image(image, "sepia")
        assert (result.width, result.height) == (1024, 1024)
    assert len(emulator.requests) == 6
    assert all(r.image == make_png(1024, 1024) for r in emulator.requests)


def test_edit_extra_params_travel_as_form_fields(hook, emulator):
    hook.edit_image(make_png(), "x", extra_params={"auto_aspect_ratio": False, "width": 1024, "height": 1024})
    fields = emulator.requests[0].fields
    assert fields["auto_aspect_ratio"] == "false"
    assert fields["width"] == "1024"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 40, "GIF"),
        (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 40, "WebP"),
        (b"just some text pretending to be a png", "not an image"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "no image frame"),
    ],
)
def test_edit_rejects_non_images_before_sending(hook, emulator, tmp_path, data, reason):
    named_png = tmp_path / "looks-like.png"
    named_png.write_bytes(data)
    with pytest.raises(MaiValidationError, match=reason):
        hook.edit_image(str(named_png), "x")
    assert emulator.requests == []


def test_edit_missing_file_is_a_clear_error(hook, emulator, tmp_path):
    with pytest.raises(MaiValidationError, match="not found"):
        hook.edit_image(str(tmp_path / "nope.png"), "x")
    with pytest.raises(MaiValidationError, match="neither 'uri' nor 'b64_json'"):
        hook.edit_image({"width": 5}, "x")
    assert emulator.requests == []


@pytest.mark.parametrize("deployment", ["mai-image-2", "mai-image-2e"])
def test_edit_on_a_model_without_edits_reports_the_service_answer(hook, emulator, deployment):
    with pytest.raises(MaiBadRequestError, match="does not support image edits") as info:
        hook.edit_image(make_png(), "x", model=deployment)
    assert info.value.status_code == 400
    assert info.value.error_code == "OperationNotSupported"
    assert len(emulator.requests) == 1


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(768, 768), (1024, 1024), (768, 1365), (1365, 768), ("1024", "1024"), (1024.0, 768)],
)
def test_valid_sizes_are_sent(hook, emulator, width, height):
    image = hook.generate_image("x", width=width, height=height)
    assert image.width == int(width) // 16 * 16
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    ("width", "height", "match"),
    [
        (767, 1024, "width=767 is too small"),
        (1024, 767, "height=767 is too small"),
        (1025, 1024, "too many"),
        (1024, 1025, "too many"),
        (769, 1365, "too many"),
        (0, 1024, "too small"),
        (-5, 1024, "too small"),
        ("big", 1024, "whole number"),
        (1024.5, 1024, "whole number"),
        (True, 1024, "whole number"),
        (None, 1024, "whole number"),
    ],
)
def test_invalid_sizes_never_reach_the_service(hook, emulator, width, height, match):
    with pytest.raises(MaiValidationError, match=match) as info:
        hook.generate_image("x", width=width, height=height)
    assert isinstance(info.value, AirflowFailException)
    assert emulator.requests == []


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", None, 42, "x" * 128_001])
def test_bad_prompts_never_reach_the_service(hook, emulator, prompt):
    with pytest.raises(MaiValidationError):
        hook.generate_image(prompt, width=768, height=768)
    assert emulator.requests == []


def test_no_deployment_anywhere_is_a_clear_error(connect, emulator):
    hook = MaiHook(connect(extra={"deployment": None}))
    with pytest.raises(MaiValidationError, match="no deployment"):
        hook.generate_image("x")
    assert emulator.requests == []


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


# -- transient errors and retries -------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_statuses_are_retried_to_success(hook, emulator, status):
    emulator.inject(Fault(status=status, body="<html><body>gateway</body></html>"), times=2)
    image = hook.generate_image("x", width=768, height=768)
    assert image.width == 768
    assert [r.status for r in emulator.requests] == [status, status, 200]


def test_retries_run_out_with_attempt_count_and_last_status(hook, emulator):
    emulator.inject(Fault(status=503), times=10)
    with pytest.raises(MaiTransientError) as info:
        hook.generate_image("x")
    error = info.value
    assert error.attempts == 4  # max_retries=3 in the test connection
    assert error.status_code == 503
    assert "4 attempt" in str(error)
    assert not isinstance(error, AirflowFailException)
    assert len(emulator.requests) == 4


def test_429_honours_retry_after_seconds(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=1))
    hook.generate_image("x", width=768, height=768)
    assert len(recorder.waits) == 1
    assert 1.0 <= recorder.waits[0] <= 1.15  # the hint, plus at most 10 % (+50 ms) of spread
    assert [r.status for r in emulator.requests] == [429, 200]


def test_429_honours_retry_after_ms_first(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=30, retry_after_ms=250))
    hook.generate_image("x", width=768, height=768)
    assert len(recorder.waits) == 1
    assert 0.25 <= recorder.waits[0] < 0.4


def test_429_honours_retry_after_http_date(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=formatdate(time.time() + 5, usegmt=True)))
    hook.generate_image("x", width=768, height=768)
    assert 3.0 <= recorder.waits[0] <= 6.5


def test_429_without_hint_backs_off_with_capped_jitter(connect, emulator, recorder):
    hook = MaiHook(
        connect(extra={"max_retries": 6, "retry_base_delay": 0.01, "retry_max_delay": 0.04}), sleep=recorder
    )
    emulator.inject(Fault(status=429), times=10)
    with pytest.raises(MaiRateLimitError) as info:
        hook.generate_image("x")
    assert info.value.attempts == 7
    assert len(recorder.waits) == 6
    assert all(0 <= w <= 0.04 for w in recorder.waits)
    assert "quota" in str(info.value)


@pytest.mark.parametrize(
    "fault",
    [Fault(drop=True), Fault(reset=True), Fault(truncate=True)],
    ids=["dropped", "reset", "truncated"],
)
def test_broken_connections_are_retried(hook, emulator, fault):
    emulator.inject(fault)
    image = hook.generate_image("x", width=768, height=768)
    assert png_size(image.png) == (768, 768)
    assert len(emulator.requests) == 2


def test_connection_refused_is_transient_and_counted(connect, free_port):
    hook = MaiHook(connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 2}))
    with pytest.raises(MaiTransientError, match="nothing answered") as info:
        hook.generate_image("x")
    assert info.value.attempts == 3


def test_answer_slower_than_read_timeout_is_retried(connect, emulator):
    hook = MaiHook(connect(extra={"timeout": 0.3}))
    emulator.inject(Fault(status=None, delay=1.0))
    image = hook.generate_image("x", width=768, height=768)
    assert image.width == 768
    assert len(emulator.requests) == 2


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


# -- errors ----------------------------------------------------------------------------------------


def test_errors_survive_pickling_with_their_fields(hook, emulator):
    with pytest.raises(MaiContentFilterError) as info:
        hook.generate_image("emulator-blocked thing")
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is MaiContentFilterError
    assert (clone.status_code, clone.error_code, clone.label) == (
        400,
        "content_safety_violation",
        info.value.label,
    )
    assert str(clone) == str(info.value)


# -- connection settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("myres.services.ai.azure.com", None, "https://myres.services.ai.azure.com"),
        ("https://myres.services.ai.azure.com/", None, "https://myres.services.ai.azure.com"),
        ("https://myres.services.ai.azure.com/mai/v1/", None, "https://myres.services.ai.azure.com"),
        ("http://127.0.0.1", 8790, "http://127.0.0.1:8790"),
        ("http://localhost:8790", None, "http://localhost:8790"),
        ("http://[::1]:8790", None, "http://[::1]:8790"),
        ("http://127.5.0.1:80", None, "http://127.5.0.1:80"),
    ],
)
def test_endpoint_normalisation(host, port, expected):
    assert normalise_endpoint(host, port) == expected


@pytest.mark.parametrize(
    ("host", "match"),
    [
        ("", "no host"),
        (None, "no host"),
        ("http://myres.services.ai.azure.com", "plain http"),
        ("http://10.0.0.5:8790", "plain http"),
        ("ftp://myres", "not an http"),
    ],
)
def test_unusable_hosts_are_refused(host, match):
    with pytest.raises(MaiConfigurationError, match=match):
        normalise_endpoint(host)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"extra": {"auth_type": "oauth"}}, "'auth_type' must be"),
        ({"password": None, "extra": {"auth_type": "api_key"}}, "no password"),
        ({"extra": {"timeout": "soon"}}, "'timeout' must be a number"),
        ({"extra": {"timeout": "nan"}}, "'timeout' must be between"),
        ({"extra": {"timeout": "inf"}}, "'timeout' must be between"),
        ({"extra": {"timeout": 0}}, "'timeout' must be between"),
        ({"extra": {"timeout": -5}}, "'timeout' must be between"),
        ({"extra": {"timeout": True}}, "'timeout' must be a number"),
        ({"extra": {"max_retries": -1}}, "'max_retries' must be between 0 and 50"),
        ({"extra": {"max_retries": 10**9}}, "'max_retries' must be between 0 and 50"),
        ({"extra": {"max_retries": 2.5}}, "'max_retries' must be a number"),
        ({"extra": {"retry_max_delay": "1e300"}}, "'retry_max_delay' must be between"),
        ({"extra": {"rpm": "-inf"}}, "'rpm' must be between"),
        ({"extra": {"max_response_mb": 0}}, "'max_response_mb' must be between"),
        ({"extra": {"max_input_mb": "lots"}}, "'max_input_mb' must be a number"),
        ({"extra": {"retry_sent_requests": "perhaps"}}, "'retry_sent_requests' must be true or false"),
        ({"password": "key with\ninside"}, "API key .* holds spaces, line breaks"),
        ({"password": "k" * 2000}, "API key .* longer than"),
        ({"host": "http://example.com"}, "plain http"),
        ({"host": "http://attacker.example\\@127.0.0.1:8080"}, "backslash"),
        ({"host": "https://user:secret@mai.example.com"}, "'@'"),
        ({"host": "https://mai.example.com/?x=1"}, "'\\?'"),
        ({"host": "https://mai.example.com:99999"}, "not a valid URL"),
        ({"host": "https://mai .example.com"}, "a space"),
    ],
)
def test_bad_connections_fail_before_any_request(connect, emulator, overrides, match):
    hook = MaiHook(connect("mai_http_remote", **overrides))
    with pytest.raises(MaiConfigurationError, match=match) as info:
        hook.generate_image("x")
    assert emulator.requests == []
    assert "mai_http_remote" in str(info.value)  # the message names the connection to fix
    assert "secret" not in str(info.value) and "inside" not in str(info.value)


@pytest.mark.parametrize("pasted", [f"{API_KEY}\n", f"  {API_KEY}\r\n", f"\t{API_KEY} "])
def test_a_key_pasted_with_surrounding_whitespace_is_used_stripped(connect, emulator, pasted):
    MaiHook(connect(password=pasted)).generate_image("x", width=768, height=768)
    assert emulator.requests[0].headers["api-key"] == API_KEY


def test_prefixed_extras_from_older_forms_are_read(connect):
    hook = MaiHook(
        connect(extra={"deployment": None, "extra__mai__deployment": "mai-image-2e", "timeout": ""})
    )
    assert hook.settings.deployment == "mai-image-2e"
    assert hook.settings.timeout == 300.0


# -- test_connection -------------------------------------------------------------------------------


def test_test_connection_proves_auth_and_deployment_without_an_image(hook, emulator):
    ok, message = hook.test_connection()
    assert ok, message
    assert "mai-image-2-5" in message
    (sent,) = emulator.requests
    assert sent.status == 400  # undersized on purpose: nothing was generated
    assert sent.fields["width"] < 768


def test_test_connection_reports_bad_key(connect):
    ok, message = MaiHook(connect(password="nope")).test_connection()
    assert not ok
    assert "401" in message
    assert "nope" not in message


def test_test_connection_reports_unknown_deployment(connect):
    ok, message = MaiHook(connect(extra={"deployment": "ghost"})).test_connection()
    assert not ok
    assert "ghost" in message and "404" in message


def test_test_connection_without_deployment_checks_credentials_only(connect):
    ok, message = MaiHook(connect(extra={"deployment": None})).test_connection()
    assert ok
    assert "No default deployment" in message


def test_test_connection_reports_unreachable_endpoint(connect, free_port):
    ok, message = MaiHook(
        connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 0})
    ).test_connection()
    assert not ok
    assert f"nothing answered at http://127.0.0.1:{free_port}" in message


def test_test_connection_reports_bad_configuration(connect):
    ok, message = MaiHook(connect(host="http://example.com")).test_connection()
    assert not ok
    assert "plain http" in message


def test_json_body_is_what_the_docs_describe(hook, emulator):
    hook.generate_image("doc check", width=768, height=1365)
    (sent,) = emulator.requests
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(json.dumps(sent.fields)) == {
        "model": "mai-image-2-5",
        "prompt": "doc check",
        "width": 768,
        "height": 1365,
    }


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
