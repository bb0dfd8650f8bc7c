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
from airflow_provider_mai.exceptions import MaiConfigurationError, MaiError, MaiTransientError

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
    authority = {"authority": s.authority} if s.authority else {}
    try:
        if s.tenant_id and s.client_id and s.client_secret:  # all three or none (settings checked)
            from azure.identity import ClientSecretCredential

            return ClientSecretCredential(s.tenant_id, s.client_id, s.client_secret, **authority)
        if s.managed_identity_client_id:
            from azure.identity import ManagedIdentityCredential

            return ManagedIdentityCredential(client_id=s.managed_identity_client_id)
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(**authority)
    except ValueError as exc:  # a shape azure-identity refuses that ours let through: its text is not ours
        raise MaiConfigurationError(
            f"connection {s.conn_id!r}: azure-identity refused its Entra ID fields ({type(exc).__name__}): "
            "check tenant_id, client_id and authority"
        ) from None


#: What a failed token fetch means, by the class names in its chain (azure-identity wraps a network
#: failure in ClientAuthenticationError, caused by azure-core's ServiceRequestError): first match wins.
_UNAVAILABLE = frozenset({"CredentialUnavailableError"})
_UNREACHABLE = frozenset({"ServiceRequestError", "ServiceResponseError", "OSError", "TimeoutError"})
_REJECTED = frozenset({"ClientAuthenticationError"})


def _token_failure(exc: BaseException, settings: MaiSettings) -> MaiError:
    """The error a failed token fetch means, in our words (its text may quote the secret)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__

    def found(kinds: frozenset[str]) -> str | None:
        """The class name of the first error in the chain that is one of ``kinds`` (or a subclass)."""
        for error in chain:
            if kinds & {cls.__name__ for cls in type(error).__mro__}:
                return type(error).__name__
        return None

    which = f"connection {settings.conn_id!r}"
    kind = type(exc).__name__
    if found(_UNAVAILABLE):
        return MaiConfigurationError(
            f"{which}: no Microsoft Entra ID credential is available on this worker ({kind}). Set "
            "tenant_id, client_id and client_secret, or managed_identity_client_id, or give the worker "
            "an identity (AZURE_* environment variables, a managed identity, az login)"
        )
    network = found(_UNREACHABLE)
    if network:
        shown = kind if network == kind else f"{kind} from {network}"
        return MaiTransientError(
            f"{which}: could not reach Microsoft Entra ID for a token ({shown}); nothing was sent to "
            "the MAI service. Check the worker's network route to the authority "
            f"({settings.authority or 'login.microsoftonline.com'}); a task retry may succeed"
        )
    if found(_REJECTED):
        return MaiConfigurationError(
            f"{which}: Microsoft Entra ID refused the credentials ({kind}). Check tenant_id, client_id "
            "and client_secret (expired?), or the worker's managed identity"
        )
    return MaiConfigurationError(
        f"could not get a Microsoft Entra ID token for {ENTRA_SCOPE}: {kind}. Check the Entra ID "
        f"fields of {which} or the worker's managed identity."
    )


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
        except Exception as exc:  # its text may quote the secret: our words, by its type
            raise _token_failure(exc, self._settings) from None
        value = (token.token or "").strip()
        if not value or len(value) > MAX_TOKEN_LENGTH or not value.isascii() or not value.isprintable():
            raise MaiConfigurationError(
                f"the Entra ID credential of connection {self._settings.conn_id!r} returned a token "
                "that cannot be sent in a header (empty, too long or with control characters)"
            )
        if self._on_secret is not None:
            self._on_secret(value)
        return type(token)(value, token.expires_on) if value != token.token else token
