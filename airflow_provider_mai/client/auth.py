"""The credentials a request carries: an API key, or a cached Microsoft Entra ID token.

azure-identity is imported only when a token is first needed (never for API keys, never at DAG
parse time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_provider_mai.api import ENTRA_SCOPE
from airflow_provider_mai.exceptions import MaiConfigurationError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

    from airflow_provider_mai.client.settings import MaiSettings

#: Fetch a new Entra token this long before the cached one expires.
TOKEN_REFRESH_MARGIN = 300.0
#: A bearer token longer than this is refused rather than sent (Entra tokens are ~2 KB).
MAX_TOKEN_LENGTH = 16 * 1024


def build_credential(settings: MaiSettings) -> TokenCredential:
    """The azure-identity credential the connection describes.

    A service principal (``tenant_id`` + ``client_id`` + ``client_secret``), else a user-assigned
    managed identity (``managed_identity_client_id``), else ``DefaultAzureCredential``.
    """
    s = settings
    if s.tenant_id or s.client_id or s.client_secret:
        if not (s.tenant_id and s.client_id and s.client_secret):
            raise MaiConfigurationError(
                f"connection {s.conn_id!r}: an Entra ID service principal needs all of tenant_id, "
                "client_id and client_secret"
            )
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(s.tenant_id, s.client_id, s.client_secret)
    if s.managed_identity_client_id:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=s.managed_identity_client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class Credentials:
    """The auth header of each request: ``api-key``, or ``Authorization: Bearer`` with a token
    fetched once, cached, and fetched again shortly before it expires (never one per image).

    :param settings: the connection's settings (auth type, key, Entra ID fields).
    :param credential: a ``TokenCredential`` to use instead of the one the settings describe.
    :param on_secret: called with each new token, e.g. to register it with a log masker.
    :param clock: wall-clock seconds (token expiry times are wall-clock).
    """

    def __init__(
        self,
        settings: MaiSettings,
        *,
        credential: TokenCredential | None = None,
        on_secret: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._credential = credential
        self._on_secret = on_secret
        self._clock = clock
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    @property
    def refreshable(self) -> bool:
        """Whether a 401 may be cured by fetching a new token (Entra ID, not API keys)."""
        return self._settings.auth_type == "entra_id"

    def headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        """The auth header for the next request."""
        if self._settings.auth_type == "api_key":
            return {"api-key": self._settings.api_key or ""}
        return {"Authorization": f"Bearer {self._bearer_token(force_refresh)}"}

    def _bearer_token(self, force_refresh: bool) -> str:
        with self._lock:
            token = self._token
            if force_refresh or token is None or token.expires_on - self._clock() < TOKEN_REFRESH_MARGIN:
                token = self._fetch()
                self._token = token
            return token.token

    def _fetch(self) -> AccessToken:
        if self._credential is None:
            self._credential = build_credential(self._settings)
        try:
            token = self._credential.get_token(ENTRA_SCOPE)
        except Exception as exc:  # its text may quote the secret: name the type only
            raise MaiConfigurationError(
                f"could not get a Microsoft Entra ID token for {ENTRA_SCOPE}: {type(exc).__name__}. "
                f"Check the Entra ID fields of connection {self._settings.conn_id!r} or the worker's "
                "managed identity."
            ) from None
        value = (token.token or "").strip()
        if not value or len(value) > MAX_TOKEN_LENGTH or not value.isascii() or not value.isprintable():
            raise MaiConfigurationError(
                f"the Entra ID credential of connection {self._settings.conn_id!r} returned a token "
                "that cannot be sent in a header (empty, too long or with control characters)"
            )
        if self._on_secret is not None:
            self._on_secret(value)
        return type(token)(value, token.expires_on) if value != token.token else token
