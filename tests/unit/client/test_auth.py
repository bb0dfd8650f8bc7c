"""The auth header (client/auth.py): API keys and Entra ID tokens (a fake TokenCredential, the only fake)."""

from __future__ import annotations

import time

import pytest
from azure.core.credentials import AccessToken

from airflow_provider_mai.api import ENTRA_SCOPE
from airflow_provider_mai.client.auth import build_credential
from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiConfigurationError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.credentials import FakeCredential


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


def test_entra_token_is_fetched_once_and_reused(entra_conn, emulator):
    credential = FakeCredential()
    hook = MaiHook(entra_conn, credential=credential)
    assert hook.settings.auth_type == "entra_id"
    for prompt in ("a", "b", "c"):
        hook.generate_image(prompt, width=768, height=768)
    assert credential.calls == 1
    assert credential.scopes == [(ENTRA_SCOPE,)]
    assert {r.headers["authorization"] for r in emulator.requests} == {f"Bearer entra-token-1-{'t' * 60}"}
    assert all("api-key" not in r.headers for r in emulator.requests)


def test_entra_token_is_refreshed_shortly_before_expiry(entra_conn):
    credential = FakeCredential(lifetime=120)  # inside the 300 s refresh margin
    hook = MaiHook(entra_conn, credential=credential)
    hook.generate_image("a", width=768, height=768)
    hook.generate_image("b", width=768, height=768)
    assert credential.calls == 2


def test_401_with_entra_fetches_one_fresh_token_and_retries_once(entra_conn, emulator):
    credential = FakeCredential()
    hook = MaiHook(entra_conn, credential=credential)
    emulator.inject(Fault(status=401))
    hook.generate_image("a", width=768, height=768)
    assert credential.calls == 2
    assert [r.status for r in emulator.requests] == [401, 200]
    assert emulator.requests[1].headers["authorization"].startswith("Bearer entra-token-2-")


def test_repeated_401_with_entra_fails_after_one_refresh(entra_conn, emulator):
    credential = FakeCredential()
    hook = MaiHook(entra_conn, credential=credential)
    emulator.inject(Fault(status=401), times=5)
    with pytest.raises(MaiAuthenticationError, match="token scope"):
        hook.generate_image("a")
    assert credential.calls == 2
    assert len(emulator.requests) == 2


def test_401_with_api_key_is_not_retried(connect, emulator):
    emulator.inject(Fault(status=401))
    with pytest.raises(MaiAuthenticationError):
        MaiHook(connect()).generate_image("a")
    assert len(emulator.requests) == 1


def test_credential_failure_is_a_clear_error_without_its_text(entra_conn, emulator):
    hook = MaiHook(entra_conn, credential=FakeCredential(fail=True))
    with pytest.raises(MaiConfigurationError, match="Entra ID token") as info:
        hook.generate_image("a")
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"tenant_id": "t", "client_id": "c", "client_secret": "s3cret-value"}, "ClientSecretCredential"),
        ({"managed_identity_client_id": "11111111-2222-3333-4444-555555555555"}, "ManagedIdentityCredential"),
        ({}, "DefaultAzureCredential"),
    ],
)
def test_credential_is_chosen_from_the_connection(connect, extra, expected):
    hook = MaiHook(connect("mai_pick", password=None, extra=extra))
    assert type(build_credential(hook.settings)).__name__ == expected


def test_incomplete_service_principal_is_refused(connect):
    hook = MaiHook(connect("mai_half", password=None, extra={"tenant_id": "t", "client_id": "c"}))
    with pytest.raises(MaiConfigurationError, match="tenant_id, client_id and client_secret"):
        build_credential(hook.settings)
