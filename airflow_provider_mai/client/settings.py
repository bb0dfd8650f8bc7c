"""The MAI connection, read and checked once: endpoint rules, auth choice, limits and bounds.

No Airflow import: :class:`MaiSettings` is built from the plain fields of a connection, so the
client can be used (and tested) without Airflow. Every number a user can set has bounds, and every
error names the connection, so a bad value fails when the connection is read - before any request.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_mai.exceptions import MaiConfigurationError, MaiValidationError

DEFAULT_TIMEOUT = 300.0
#: Seconds to wait for a TCP (and TLS) connection; never longer than ``timeout``.
CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_MAX_RESPONSE_MB = 64.0
DEFAULT_MAX_INPUT_MB = 50.0
MIB = 1024 * 1024
#: API keys are printable ASCII without spaces; anything longer than this is not a key.
MAX_API_KEY_LENGTH = 1024
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
#: Entra ID application, client and directory ids are GUIDs.
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A directory may also be named by one of its domains (``contoso.onmicrosoft.com``); an authority
#: is a host name (``login.microsoftonline.us``).
_DOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})+")


@dataclass(frozen=True)
class MaiSettings:
    """What the provider reads from one connection, checked. Secrets stay out of the repr.

    :param conn_id: the connection's id, named in every configuration error.
    :param endpoint: ``https://<resource>.services.ai.azure.com`` (or a loopback emulator).
    :param deployment: the default deployment name, or None.
    :param auth_type: ``api_key`` or ``entra_id``.
    :param api_key: the API key, surrounding whitespace stripped.
    :param timeout: seconds for one response: connect, headers and the whole body.
    :param max_retries: retries of a transient failure after the first attempt.
    :param max_response_bytes: the largest response body accepted (after decompression).
    :param max_input_bytes: the largest edit input read.
    :param retry_sent_requests: retry a request that was fully sent and then failed (it may have
        been billed): a timeout, a cut-off answer, a 5xx.
    :param deferrable: the operators' mode when a task does not say (extra ``deferrable``): True
        sends from the triggerer, False holds a worker slot; None (not set) leaves it to
        ``[operators] default_deferrable``.
    :param allow_http_inputs: accept ``http(s)://`` URLs as edit input (off: the worker fetches no URL
        a template renders).
    :param tenant_id: Entra ID service principal: the directory (tenant) id, a GUID or a domain.
    :param client_id: Entra ID service principal: the application (client) id, a GUID.
    :param client_secret: Entra ID service principal: its secret.
    :param managed_identity_client_id: Entra ID user-assigned managed identity: its client id, a GUID.
    :param authority: the Entra ID authority host for a national cloud (e.g.
        ``https://login.microsoftonline.us``); None: azure-identity's default (the public cloud).
    """

    conn_id: str
    endpoint: str
    deployment: str | None = None
    auth_type: str = "api_key"
    api_key: str | None = field(default=None, repr=False)
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    authority: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_base_delay: float = 2.0
    retry_max_delay: float = 60.0
    ca_bundle: str | None = None
    rpm: float | None = None
    rpm_state_dir: str | None = None
    rpm_redis_conn_id: str | None = None
    max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * MIB)
    max_input_bytes: int = int(DEFAULT_MAX_INPUT_MB * MIB)
    retry_sent_requests: bool = True
    allow_http_inputs: bool = False
    deferrable: bool | None = None

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for a connection: a few seconds, and never more than ``timeout``."""
        return min(CONNECT_TIMEOUT, self.timeout)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values of the connection, for a log masker."""
        return tuple(s for s in (self.api_key, self.client_secret) if s)

    def deployment_for(self, model: str | None) -> str:
        """The deployment a call uses: its own ``model``, else the connection's ``deployment``."""
        deployment = model or self.deployment
        if not deployment:
            raise MaiValidationError(
                "no deployment given: pass model=<deployment name> or set the extra 'deployment' "
                f"of connection {self.conn_id!r}"
            )
        return str(deployment)

    @classmethod
    def from_connection(
        cls,
        conn_id: str,
        *,
        host: str | None,
        port: int | None = None,
        password: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> MaiSettings:
        """Read and check a connection's fields (as an Airflow ``Connection`` holds them)."""
        extras = _Extras(conn_id, extra or {})
        api_key = _api_key(conn_id, password)
        auth_type = str(extras.text("auth_type") or ("api_key" if api_key else "entra_id")).lower()
        if auth_type not in ("api_key", "entra_id"):
            raise extras.error(f"extra 'auth_type' must be 'api_key' or 'entra_id', got {auth_type!r}")
        if auth_type == "api_key" and not api_key:
            raise extras.error("auth_type is api_key but there is no password: put the API key there")
        entra = _entra_fields(extras) if auth_type == "entra_id" else {}
        return cls(
            conn_id=conn_id,
            endpoint=normalise_endpoint(host, port, conn_id=conn_id),
            deployment=extras.text("deployment"),
            auth_type=auth_type,
            api_key=api_key,
            **entra,
            timeout=extras.number("timeout", DEFAULT_TIMEOUT, low=0.001, high=86_400.0),
            max_retries=extras.number("max_retries", DEFAULT_MAX_RETRIES, low=0, high=50, cast=int),
            retry_base_delay=extras.number("retry_base_delay", 2.0, low=0.0, high=600.0),
            retry_max_delay=extras.number("retry_max_delay", 60.0, low=0.0, high=3_600.0),
            ca_bundle=extras.text("ca_bundle"),
            rpm=extras.number("rpm", 0.0, low=0.0, high=1_000_000.0) or None,
            rpm_state_dir=extras.text("rpm_state_dir"),
            rpm_redis_conn_id=extras.text("rpm_redis_conn_id"),
            max_response_bytes=int(
                extras.number("max_response_mb", DEFAULT_MAX_RESPONSE_MB, low=0.001, high=4096.0) * MIB
            ),
            max_input_bytes=int(
                extras.number("max_input_mb", DEFAULT_MAX_INPUT_MB, low=0.001, high=4096.0) * MIB
            ),
            retry_sent_requests=extras.flag("retry_sent_requests", True),
            allow_http_inputs=extras.flag("allow_http_inputs", False),
            deferrable=extras.optional_flag("deferrable"),
        )


class _Extras:
    """A connection's extras, read by plain name or by the older ``extra__mai__`` prefix."""

    def __init__(self, conn_id: str, extras: Mapping[str, Any]) -> None:
        self.conn_id = conn_id
        self.extras = extras

    def error(self, message: str) -> MaiConfigurationError:
        return MaiConfigurationError(f"connection {self.conn_id!r}: {message}")

    def raw(self, name: str) -> Any:
        """The value, or None when absent or an empty string."""
        for key in (name, f"extra__mai__{name}"):
            value = self.extras.get(key)
            if value is not None and value != "":
                return value
        return None

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def number(
        self,
        name: str,
        default: float,
        *,
        low: float,
        high: float,
        cast: Callable[[Any], Any] = float,
    ) -> Any:
        """A finite number within [low, high]; anything else is a configuration error."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if cast is int:
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise self.error(f"extra {name!r} must be a number, got {value!r}") from None
        if math.isnan(number) or not low <= number <= high:
            raise self.error(f"extra {name!r} must be between {low:g} and {high:g}, got {value!r}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.optional_flag(name)
        return default if value is None else value

    def optional_flag(self, name: str) -> bool | None:
        """True or False (a JSON boolean, or text such as ``"true"``/``"false"``); None when unset."""
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.error(f"extra {name!r} must be true or false, got {value!r}")


def _entra_fields(extras: _Extras) -> dict[str, str | None]:
    """The Entra ID extras, checked for their shape now: azure-identity would refuse a malformed
    one only when the first token is fetched, with a ValueError of its own (and task retries spent)."""
    fields = {
        name: extras.text(name)
        for name in ("tenant_id", "client_id", "client_secret", "managed_identity_client_id", "authority")
    }
    principal = ("tenant_id", "client_id", "client_secret")
    missing = [name for name in principal if not fields[name]]
    if 0 < len(missing) < len(principal):
        raise extras.error(
            "an Entra ID service principal needs all of tenant_id, client_id and client_secret "
            f"(missing: {', '.join(missing)})"
        )
    tenant = fields["tenant_id"]
    if tenant and not (_GUID.fullmatch(tenant) or (len(tenant) <= 253 and _DOMAIN.fullmatch(tenant))):
        raise extras.error(
            "extra 'tenant_id' must be the directory (tenant) id - a GUID like "
            "00000000-0000-0000-0000-000000000000 - or one of its domains, like contoso.onmicrosoft.com; "
            f"got {tenant[:100]!r}"
        )
    for name in ("client_id", "managed_identity_client_id"):
        value = fields[name]
        if value and not _GUID.fullmatch(value):
            raise extras.error(
                f"extra {name!r} must be a client id, a GUID like 00000000-0000-0000-0000-000000000000; "
                f"got {value[:100]!r}"
            )
    if fields["authority"]:
        fields["authority"] = _authority(extras, fields["authority"])
    return fields


def _authority(extras: _Extras, text: str) -> str:
    """``https://<host>`` from an authority given as a host or an https URL (nothing else)."""
    host = text[len("https://") :] if text.lower().startswith("https://") else text
    host = host.rstrip("/")
    if "://" in host or not (len(host) <= 253 and _DOMAIN.fullmatch(host)):
        raise extras.error(
            "extra 'authority' must be an Entra ID authority host, like login.microsoftonline.us or "
            f"https://login.microsoftonline.us; got {text[:100]!r}"
        )
    return f"https://{host.lower()}"


def _api_key(conn_id: str, password: str | None) -> str | None:
    """The key with surrounding whitespace stripped (secret files end in a newline).

    What is left must be printable ASCII without spaces: anything else could not travel in a header,
    and the transport's error would quote it. The key itself is never part of a message.
    """
    if password is None:
        return None
    key = password.strip()
    if not key:
        return None
    if len(key) > MAX_API_KEY_LENGTH or any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        raise MaiConfigurationError(
            f"connection {conn_id!r}: the API key (password) holds spaces, line breaks or other "
            f"characters a key cannot have, or is longer than {MAX_API_KEY_LENGTH} characters: "
            "paste the key again"
        )
    return key


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalise_endpoint(host: str | None, port: int | None = None, *, conn_id: str | None = None) -> str:
    """``https://<resource>.services.ai.azure.com`` from what a user typed in the connection host.

    No scheme means https; a trailing ``/`` (or a pasted ``/mai/v1`` path) is dropped. The host is
    judged exactly as the transport (urllib3) will connect to it: anything the two URL parsers could
    read differently - a backslash, user info, whitespace, a query - is refused. Plain http is
    accepted only for loopback hosts, so keys never travel in clear text. Errors name ``conn_id``
    (never a default's name: a message must name the connection actually used).
    """
    which = f"connection {conn_id!r}" if conn_id else "the connection"
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    def refuse(why: str) -> MaiConfigurationError:
        # A host with '@' may hold 'user:password@': it is never quoted, not even in part.
        shown = "(not shown: it holds an '@')" if "@" in (host or "") else repr((host or "").strip()[:200])
        return MaiConfigurationError(f"{which}: the host {shown} {why}")

    text = (host or "").strip()
    if not text:
        raise MaiConfigurationError(
            f"{which} has no host: set it to https://<resource-name>.services.ai.azure.com"
        )
    if any(ch in text for ch in "\\@?#") or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in text):
        raise refuse(
            "holds a backslash, '@', '?', '#', a space or a control character: give just "
            "https://<resource-name>.services.ai.azure.com"
        )
    if "://" not in text:
        text = f"https://{text}"
    try:
        ours = urlsplit(text)
        theirs = parse_url(text)
        our_port = ours.port
    except (ValueError, LocationParseError):
        raise refuse("is not a valid URL") from None
    scheme = ours.scheme.lower()
    if scheme not in ("http", "https") or not ours.hostname:
        raise refuse("is not an http(s) endpoint")
    their_host = (theirs.host or "").strip("[]").lower()
    if (
        (theirs.scheme or "").lower() != scheme
        or their_host != ours.hostname.lower()
        or (theirs.port != our_port)
    ):
        raise refuse("is read differently by different URL parsers: give a plain https:// URL")
    if scheme == "http" and not _is_loopback(ours.hostname):
        raise refuse(
            "uses plain http: only https is allowed for remote endpoints (http is accepted for "
            "loopback emulators only), so keys never travel in clear text"
        )
    netloc = ours.netloc
    if port and our_port is None:
        if not 0 < int(port) < 65536:
            raise MaiConfigurationError(f"{which}: port {port} is not a TCP port")
        netloc = f"{netloc}:{int(port)}"
    path = ours.path.rstrip("/")
    if path.endswith("/mai/v1"):
        path = path[: -len("/mai/v1")]
    return f"{scheme}://{netloc}{path}"
