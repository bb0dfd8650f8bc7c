"""The auth header (client/auth.py): API keys and Entra ID tokens (a fake TokenCredential, the only fake)."""

from __future__ import annotations

import time

import pytest
from airflow.sdk.exceptions import AirflowFailException
from azure.core.credentials import AccessToken

from airflow_provider_mai.api import ENTRA_SCOPE
from airflow_provider_mai.client.auth import build_credential
from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiConfigurationError,
    MaiError,
    MaiTransientError,
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


TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": "s3cret-value"},
            "ClientSecretCredential",
        ),
        (
            {"tenant_id": "contoso.onmicrosoft.com", "client_id": CLIENT, "client_secret": "s"},
            "ClientSecretCredential",
        ),
        ({"managed_identity_client_id": CLIENT}, "ManagedIdentityCredential"),
        ({}, "DefaultAzureCredential"),
    ],
)
def test_credential_is_chosen_from_the_connection(connect, extra, expected):
    hook = MaiHook(connect("mai_pick", password=None, extra=extra))
    assert type(build_credential(hook.settings)).__name__ == expected


def test_an_authority_for_a_national_cloud_reaches_the_credential(connect):
    extra = {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "client_secret": "s",
        "authority": "login.microsoftonline.us/",
    }
    hook = MaiHook(connect("mai_gov", password=None, extra=extra))
    assert hook.settings.authority == "https://login.microsoftonline.us"
    credential = build_credential(hook.settings)
    assert credential._authority == "https://login.microsoftonline.us"  # where azure-identity keeps it


class RaisingCredential:
    """A TokenCredential whose token service fails the way azure-identity reports it (the only fake)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        raise self.error


def _unreachable() -> BaseException:
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    # What ClientSecretCredential raised here for an authority it could not resolve (checked).
    try:
        try:
            raise ServiceRequestError("Failed to resolve 'login.microsoftonline.com' hunter2-secret")
        except ServiceRequestError as cause:
            raise ClientAuthenticationError(message=f"Authentication failed: {cause}") from cause
    except ClientAuthenticationError as error:
        return error


def _rejected() -> BaseException:
    from azure.core.exceptions import ClientAuthenticationError

    # What msal's answer for a wrong secret becomes: the authority's text, no response, no cause.
    return ClientAuthenticationError(
        message="Authentication failed: AADSTS7000215: Invalid client secret hunter2-secret"
    )


def _unavailable() -> BaseException:
    from azure.identity import CredentialUnavailableError

    return CredentialUnavailableError(
        message="ManagedIdentityCredential authentication unavailable hunter2-secret"
    )


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (
            _unreachable,
            MaiTransientError,
            "could not reach Microsoft Entra ID for a token "
            "(ClientAuthenticationError from ServiceRequestError)",
        ),
        (
            _rejected,
            MaiConfigurationError,
            "Microsoft Entra ID refused the credentials (ClientAuthenticationError)",
        ),
        (_unavailable, MaiConfigurationError, "no Microsoft Entra ID credential is available on this worker"),
    ],
)
def test_an_unreachable_authority_and_a_rejected_secret_read_differently(
    connect, emulator, error, kind, words
):
    hook = MaiHook(connect("mai_team_entra", password=None), credential=RaisingCredential(error()))
    with pytest.raises(MaiError) as info:
        hook.generate_image("a", width=768, height=768)
    assert type(info.value) is kind  # permanent ones fail the task at once; a network failure may be retried
    assert issubclass(kind, AirflowFailException) is (kind is MaiConfigurationError)
    assert words in str(info.value)
    assert "connection 'mai_team_entra'" in str(info.value)
    assert "hunter2" not in str(info.value) and info.value.__cause__ is None
    assert emulator.requests == []
