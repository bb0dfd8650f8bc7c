"""Entra ID auth with a fake TokenCredential (Azure's token service cannot exist here), and secrets."""

from __future__ import annotations

import logging
import time

import pytest
from azure.core.credentials import AccessToken

from airflow_provider_mai.api import ENTRA_SCOPE
from airflow_provider_mai.client.auth import build_credential
from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import MaiAuthenticationError, MaiConfigurationError
from airflow_provider_mai.hooks.mai import MaiHook
from tests.conftest import API_KEY


class FakeCredential:
    """A TokenCredential that hands out numbered tokens with a chosen lifetime."""

    def __init__(self, lifetime: float = 3600, fail: bool = False) -> None:
        self.lifetime = lifetime
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []

    @property
    def calls(self) -> int:
        return len(self.scopes)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        if self.fail:
            raise RuntimeError("client secret 'hunter2-secret' was rejected by the authority")
        return AccessToken(f"entra-token-{self.calls}-" + "t" * 60, int(time.time() + self.lifetime))


@pytest.fixture
def entra_conn(connect) -> str:
    return connect("mai_entra", password=None)


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


def test_auth_type_defaults_follow_the_password(connect):
    assert MaiHook(connect("mai_k")).settings.auth_type == "api_key"
    assert MaiHook(connect("mai_e", password=None)).settings.auth_type == "entra_id"
    forced = MaiHook(connect("mai_f", extra={"auth_type": "entra_id"}))
    assert forced.settings.auth_type == "entra_id"


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
