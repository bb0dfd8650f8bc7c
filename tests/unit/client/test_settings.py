"""A connection's fields read and bounded (client/settings.py): endpoints, keys, extras."""

from __future__ import annotations

import pytest

from airflow_provider_mai.client.settings import normalise_endpoint
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.connections import API_KEY


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


def test_a_host_whose_password_holds_a_slash_is_not_echoed(connect, emulator):
    hook = MaiHook(connect("mai_userinfo", host="https://svc:Zm9v/YmFy@res.services.ai.azure.com"))
    with pytest.raises(MaiConfigurationError) as info:
        hook.generate_image("x", width=768, height=768)
    assert "Zm9v" not in str(info.value) and "YmFy" not in str(info.value)


def test_auth_type_defaults_follow_the_password(connect):
    assert MaiHook(connect("mai_k")).settings.auth_type == "api_key"
    assert MaiHook(connect("mai_e", password=None)).settings.auth_type == "entra_id"
    forced = MaiHook(connect("mai_f", extra={"auth_type": "entra_id"}))
    assert forced.settings.auth_type == "entra_id"


# -- Entra ID extras: checked when the connection is read ------------------------------------------
GUID = "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            {"tenant_id": "bogus tenant!", "client_id": GUID, "client_secret": "s"},
            "'tenant_id' must be the directory",
        ),
        (
            {"tenant_id": "contoso", "client_id": GUID, "client_secret": "s"},
            "'tenant_id' must be the directory",
        ),
        ({"tenant_id": GUID, "client_id": "my app", "client_secret": "s"}, "'client_id' must be a client id"),
        ({"tenant_id": GUID, "client_id": GUID}, r"needs all of .* \(missing: client_secret\)"),
        ({"client_secret": "s"}, r"\(missing: tenant_id, client_id\)"),
        ({"managed_identity_client_id": "{guid}"}, "'managed_identity_client_id' must be a client id"),
        ({"authority": "http://login.example"}, "'authority' must be an Entra ID authority host"),
        ({"authority": "https://login.microsoftonline.us/tenant"}, "'authority' must be"),
        ({"authority": "login microsoftonline"}, "'authority' must be"),
    ],
)
def test_malformed_entra_extras_fail_when_the_connection_is_read(connect, emulator, extra, match):
    from airflow.sdk.exceptions import AirflowFailException

    hook = MaiHook(connect("mai_team_entra", password=None, extra=extra))
    with pytest.raises(MaiConfigurationError, match=match) as info:
        hook.generate_image("x", width=768, height=768)
    assert isinstance(info.value, AirflowFailException)  # no task retries spent on it
    assert "connection 'mai_team_entra'" in str(info.value)
    assert emulator.requests == []


def test_entra_extras_are_not_judged_for_an_api_key_connection(connect):
    hook = MaiHook(connect("mai_key", extra={"tenant_id": "left over"}))
    assert hook.settings.auth_type == "api_key" and hook.settings.tenant_id is None


# -- every message names the connection actually used (never a default's name) -----------------------
def test_errors_name_the_connection_actually_used(connect, emulator, tmp_path):
    from airflow_provider_mai.emulator import Fault
    from airflow_provider_mai.exceptions import MaiError

    conn = "mai_campaign_eu"

    def message(call, **overrides) -> str:  # type: ignore[no-untyped-def]
        hook = MaiHook(connect(conn, **overrides))
        with pytest.raises(MaiError) as info:
            call(hook)
        return str(info.value)

    def generate(hook: MaiHook) -> None:
        hook.generate_image("x", width=768, height=768)

    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\0" * 2 * 1024 * 1024)
    messages = {
        "no host": message(generate, host=""),
        "bad extra": message(generate, extra={"timeout": "soon"}),
        "no deployment": message(generate, extra={"deployment": None}),
        "edit input too large": message(
            lambda h: h.edit_image(str(tmp_path / "big.png"), "x"), extra={"max_input_mb": 1}
        ),
        "web input refused": message(lambda h: h.edit_image("https://example.com/a.png", "x")),
        "undefined redis": message(generate, extra={"rpm": 6, "rpm_redis_conn_id": "no_such_redis"}),
    }
    for status in (401, 403, 404):
        emulator.inject(Fault(status=status))
        messages[str(status)] = message(generate)
    for what, text in messages.items():
        assert f"'{conn}'" in text, (what, text)
        assert "mai_default" not in text, (what, text)
