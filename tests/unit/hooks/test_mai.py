"""MaiHook over real HTTP to the emulator: the calls DAG authors use, the connection test, the masker."""

from __future__ import annotations

import logging
import time

import pytest

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiBadRequestError,
    MaiConfigurationError,
    MaiValidationError,
)
from airflow_provider_mai.hooks.mai import MaiHook, MaiImage
from airflow_provider_mai.validation import png_size
from tests.support.connections import API_KEY
from tests.support.credentials import FakeCredential
from tests.support.helpers import make_png


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


def test_model_argument_overrides_connection_deployment(hook, emulator):
    image = hook.generate_image("x", width=768, height=768, model="mai-image-2e")
    assert image.deployment == "mai-image-2e"
    assert emulator.requests[0].deployment == "mai-image-2e"


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


@pytest.mark.parametrize("deployment", ["mai-image-2", "mai-image-2e"])
def test_edit_on_a_model_without_edits_reports_the_service_answer(hook, emulator, deployment):
    with pytest.raises(MaiBadRequestError, match="does not support image edits") as info:
        hook.edit_image(make_png(), "x", model=deployment)
    assert info.value.status_code == 400
    assert info.value.error_code == "OperationNotSupported"
    assert len(emulator.requests) == 1


def test_no_deployment_anywhere_is_a_clear_error(connect, emulator):
    hook = MaiHook(connect(extra={"deployment": None}))
    with pytest.raises(MaiValidationError, match="no deployment"):
        hook.generate_image("x")
    assert emulator.requests == []


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


# -- secrets ---------------------------------------------------------------------------------------
def _redact(text: str) -> str:
    from airflow.sdk._shared.secrets_masker import redact

    return str(redact(text))


def test_api_key_and_client_secret_are_registered_with_the_masker(connect):
    secret = "sp-secret-" + "z" * 30
    hook = MaiHook(connect("mai_mask", extra={"client_secret": secret}))
    hook.settings  # noqa: B018 - reading the connection registers its secrets
    assert API_KEY not in _redact(f"key={API_KEY}")
    assert secret not in _redact(f"secret={secret}")
    assert secret not in repr(hook.settings)
    assert API_KEY not in repr(hook.settings)


def test_entra_token_is_registered_with_the_masker(entra_conn):
    credential = FakeCredential()
    hook = MaiHook(entra_conn, credential=credential)
    hook.generate_image("a", width=768, height=768)
    token = f"entra-token-1-{'t' * 60}"
    assert token not in _redact(f"Authorization: Bearer {token}")


def test_no_secret_in_logs_or_errors_across_retries_and_failures(connect, emulator, caplog, capfd):
    hook = MaiHook(connect())
    caplog.set_level(logging.DEBUG)
    emulator.inject(Fault(status=503), times=2)
    hook.generate_image("a", width=768, height=768)
    emulator.inject(Fault(status=401))
    with pytest.raises(MaiAuthenticationError) as info:
        hook.generate_image("b")
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err  # Airflow's structlog writes to stdout
    texts = [logs, str(info.value), repr(info.value), repr(hook)]
    assert "retrying" in logs  # the retries were logged...
    assert all(API_KEY not in t for t in texts)  # ...and the key never was


def test_hook_class_attributes_follow_airflow_conventions():
    assert (MaiHook.conn_type, MaiHook.default_conn_name, MaiHook.conn_name_attr) == (
        "mai",
        "mai_default",
        "mai_conn_id",
    )
    # The form is declarative (provider info), not the pre-3.2 hook methods.
    assert "get_ui_field_behaviour" not in vars(MaiHook)
    assert "get_connection_form_widgets" not in vars(MaiHook)


# -- the deferrable extra --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "read"), [(True, True), ("true", True), (" False ", False), (False, False), (None, None)]
)
def test_the_deferrable_extra_is_read_as_a_flag_or_unset(connect, value, read):
    assert MaiHook(connect("mai_modes", extra={"deferrable": value})).settings.deferrable is read


@pytest.mark.parametrize("value", ["sometimes", 2, [True], {"on": True}])
def test_a_deferrable_extra_that_is_no_flag_is_refused_naming_the_connection(connect, value):
    with pytest.raises(MaiConfigurationError, match=r"connection 'mai_modes'.*'deferrable'"):
        assert MaiHook(connect("mai_modes", extra={"deferrable": value})).settings.deferrable is None
