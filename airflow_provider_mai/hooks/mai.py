"""MaiHook: the only place that speaks HTTP to a MAI image deployment.

One pooled ``requests.Session`` per hook; API key or Microsoft Entra ID auth (token cached and
refreshed shortly before expiry); validation before anything is sent; one request path with one
retry policy; errors mapped in :mod:`airflow_provider_mai.exceptions`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiError,
    MaiResponseError,
    MaiTransientError,
    MaiValidationError,
    error_for_response,
    request_id_from,
)
from airflow_provider_mai.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_mai.retry import RetryPolicy, retry_after_seconds
from airflow_provider_mai.validation import (
    png_size,
    validate_edit_image,
    validate_prompt,
    validate_size,
)

if TYPE_CHECKING:
    import requests
    from azure.core.credentials import AccessToken, TokenCredential

    from airflow_provider_mai.pacing import RequestPacer
    from airflow_provider_mai.pacing_redis import RedisRequestPacer
    from airflow_provider_mai.storage import ImageSource

GENERATIONS_PATH = "/mai/v1/images/generations"
EDITS_PATH = "/mai/v1/images/edits"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
#: Fetch a new Entra token this long before the cached one expires.
TOKEN_REFRESH_MARGIN = 300.0
DEFAULT_TIMEOUT = 300.0
CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 5
RESERVED_PARAMS = frozenset({"model", "prompt", "image"})
#: Size of a dummy edit input part name sent by the service's samples; the name itself carries no meaning.
_EDIT_FILENAMES = {"image/png": "image.png", "image/jpeg": "image.jpg"}


@dataclass(frozen=True)
class MaiImage:
    """One image returned by the service. Immutable.

    :param png: the PNG bytes.
    :param width: width in pixels, read from the PNG (the service may snap sizes to 16).
    :param height: height in pixels, read from the PNG.
    :param model: the model the service reports (its ``model`` field), else the deployment name.
    :param prompt: the prompt sent.
    :param deployment: the deployment name the request named.
    :param request_id: the service's request id, when a response header carried one.
    :param usage: the service's token counts, when the body carried them.
    :param response: every other top-level field of the success body (kept, not interpreted).
    """

    png: bytes = field(repr=False)
    width: int
    height: int
    model: str
    prompt: str
    deployment: str = ""
    request_id: str | None = None
    usage: Mapping[str, Any] | None = None
    response: Mapping[str, Any] = field(default_factory=dict, repr=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.png).hexdigest())

    @property
    def size_bytes(self) -> int:
        """Length of the PNG in bytes."""
        return len(self.png)


@dataclass(frozen=True)
class _Settings:
    """What the hook reads from its Airflow connection, once."""

    endpoint: str
    deployment: str | None
    auth_type: str
    api_key: str | None = field(repr=False)
    tenant_id: str | None
    client_id: str | None
    client_secret: str | None = field(repr=False)
    managed_identity_client_id: str | None
    timeout: float
    max_retries: int
    retry_base_delay: float
    retry_max_delay: float
    ca_bundle: str | None
    rpm: float | None = None
    rpm_state_dir: str | None = None
    rpm_redis_conn_id: str | None = None


def _extra(extras: Mapping[str, Any], name: str) -> Any:
    """An extra by plain name or by the older ``extra__mai__`` prefix; empty strings count as absent."""
    for key in (name, f"extra__mai__{name}"):
        value = extras.get(key)
        if value is not None and value != "":
            return value
    return None


def _number(extras: Mapping[str, Any], name: str, default: float, cast: Callable[[Any], Any]) -> Any:
    value = _extra(extras, name)
    if value is None:
        return default
    try:
        number = cast(value)
    except (TypeError, ValueError):
        raise MaiConfigurationError(f"connection extra {name!r} must be a number, got {value!r}") from None
    if number < 0:
        raise MaiConfigurationError(f"connection extra {name!r} must not be negative, got {value!r}")
    return number


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalise_endpoint(host: str | None, port: int | None = None) -> str:
    """``https://<resource>.services.ai.azure.com`` from what a user typed in the connection host.

    No scheme means https; a trailing ``/`` (or a pasted ``/mai/v1`` path) is dropped; plain http is
    accepted only for loopback hosts, so keys never travel in clear text.
    """
    text = (host or "").strip()
    if not text:
        raise MaiConfigurationError(
            "the MAI connection has no host: set it to https://<resource-name>.services.ai.azure.com"
        )
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise MaiConfigurationError(f"the MAI connection host {host!r} is not an http(s) endpoint")
    if scheme == "http" and not _is_loopback(parts.hostname):
        raise MaiConfigurationError(
            f"the MAI connection host {host!r} uses plain http: only https is allowed for remote "
            "endpoints (http is accepted for loopback emulators only), so keys never travel in clear text"
        )
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/mai/v1"):
        path = path[: -len("/mai/v1")]
    return f"{scheme}://{netloc}{path}"


class MaiHook(BaseHook):
    """Talks to Microsoft Foundry MAI image deployments (text-to-image and image edits).

    :param mai_conn_id: the Airflow connection (type ``mai``) holding endpoint and credentials.
    :param credential: an azure-identity ``TokenCredential`` to use for Entra ID instead of the one
        built from the connection (e.g. a workload identity you already hold).
    """

    conn_name_attr = "mai_conn_id"
    default_conn_name = "mai_default"
    conn_type = "mai"
    hook_name = "Microsoft Foundry MAI"

    def __init__(
        self,
        mai_conn_id: str = default_conn_name,
        *,
        credential: TokenCredential | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mai_conn_id = mai_conn_id
        self._credential = credential
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep
        self._pacers: dict[str, RequestPacer | RedisRequestPacer] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mai_conn_id={self.mai_conn_id!r})"

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> _Settings:
        """The connection, read and checked once per hook."""
        conn = self.get_connection(self.mai_conn_id)
        extras = conn.extra_dejson
        api_key = conn.password or None
        auth_type = str(_extra(extras, "auth_type") or ("api_key" if api_key else "entra_id")).lower()
        if auth_type not in ("api_key", "entra_id"):
            raise MaiConfigurationError(
                f"connection extra auth_type must be 'api_key' or 'entra_id', got {auth_type!r}"
            )
        if auth_type == "api_key" and not api_key:
            raise MaiConfigurationError(
                "auth_type is api_key but the connection has no password: put the API key there"
            )
        settings = _Settings(
            endpoint=normalise_endpoint(conn.host, conn.port),
            deployment=_extra(extras, "deployment"),
            auth_type=auth_type,
            api_key=api_key,
            tenant_id=_extra(extras, "tenant_id"),
            client_id=_extra(extras, "client_id"),
            client_secret=_extra(extras, "client_secret"),
            managed_identity_client_id=_extra(extras, "managed_identity_client_id"),
            timeout=_number(extras, "timeout", DEFAULT_TIMEOUT, float),
            max_retries=_number(extras, "max_retries", DEFAULT_MAX_RETRIES, int),
            retry_base_delay=_number(extras, "retry_base_delay", 2.0, float),
            retry_max_delay=_number(extras, "retry_max_delay", 60.0, float),
            ca_bundle=_extra(extras, "ca_bundle"),
            rpm=_number(extras, "rpm", 0.0, float) or None,
            rpm_state_dir=_extra(extras, "rpm_state_dir"),
            rpm_redis_conn_id=_extra(extras, "rpm_redis_conn_id"),
        )
        from airflow.sdk.log import mask_secret

        for secret in (settings.api_key, settings.client_secret):
            if secret:
                mask_secret(secret)
        return settings

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """Backoff and retry budget from the connection."""
        s = self.settings
        return RetryPolicy(s.max_retries, s.retry_base_delay, s.retry_max_delay)

    def get_conn(self) -> requests.Session:
        """The hook's pooled HTTP session (keep-alive across calls)."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        import requests

        session = requests.Session()
        # Retries are ours (one policy, one place); the adapter only pools connections.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = f"airflow-provider-mai/{_version()}"
        if self.settings.ca_bundle:
            session.verify = self.settings.ca_bundle
        return session

    # -- auth ---------------------------------------------------------------------------------

    def _build_credential(self) -> TokenCredential:
        s = self.settings
        if s.tenant_id or s.client_id or s.client_secret:
            if not (s.tenant_id and s.client_id and s.client_secret):
                raise MaiConfigurationError(
                    "an Entra ID service principal needs all of tenant_id, client_id and client_secret"
                )
            from azure.identity import ClientSecretCredential

            return ClientSecretCredential(s.tenant_id, s.client_id, s.client_secret)
        if s.managed_identity_client_id:
            from azure.identity import ManagedIdentityCredential

            return ManagedIdentityCredential(client_id=s.managed_identity_client_id)
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def _bearer_token(self, *, force_refresh: bool = False) -> str:
        """A cached Entra token, fetched again shortly before it expires (never one per image)."""
        with self._token_lock:
            token = self._token
            if force_refresh or token is None or token.expires_on - time.time() < TOKEN_REFRESH_MARGIN:
                if self._credential is None:
                    self._credential = self._build_credential()
                try:
                    token = self._credential.get_token(ENTRA_SCOPE)
                except Exception as exc:
                    raise MaiConfigurationError(
                        f"could not get a Microsoft Entra ID token for {ENTRA_SCOPE}: "
                        f"{type(exc).__name__}. Check the connection's Entra ID fields or the "
                        "worker's managed identity."
                    ) from None
                from airflow.sdk.log import mask_secret

                mask_secret(token.token)
                self._token = token
            return token.token

    def _auth_headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        if self.settings.auth_type == "api_key":
            return {"api-key": self.settings.api_key or ""}
        return {"Authorization": f"Bearer {self._bearer_token(force_refresh=force_refresh)}"}

    # -- the one request path -----------------------------------------------------------------

    def _deployment(self, model: str | None) -> str:
        deployment = model or self.settings.deployment
        if not deployment:
            raise MaiValidationError(
                "no deployment given: pass model=<deployment name> or set the connection extra 'deployment'"
            )
        return str(deployment)

    def _pace(self, deployment: str) -> None:
        """With a stated quota (extra ``rpm``), wait for this deployment's next free send slot."""
        rpm = self.settings.rpm
        if not rpm:
            return
        pacer = self._pacers.get(deployment)
        if pacer is None:
            key = f"{self.settings.endpoint}|{deployment}"
            pacer = self._pacers[deployment] = self._new_pacer(key, rpm)
        wait = pacer.reserve()
        if wait > 0:
            self.log.info(
                "Pacing deployment %r at %g requests/minute: sending in %.1f s", deployment, rpm, wait
            )
            self.sleep(wait)

    def _new_pacer(self, key: str, rpm: float) -> RequestPacer | RedisRequestPacer:
        """The send-slot schedule: in Redis with extra ``rpm_redis_conn_id``, else a file on this host."""
        redis_conn_id = self.settings.rpm_redis_conn_id
        if not redis_conn_id:
            from airflow_provider_mai.pacing import RequestPacer

            return RequestPacer(key, rpm, self.settings.rpm_state_dir)
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_provider_mai.pacing_redis import RedisRequestPacer, redis_url_from_connection

        try:
            redis_conn = self.get_connection(redis_conn_id)
        except AirflowNotFoundException:
            raise MaiConfigurationError(
                f"connection extra rpm_redis_conn_id names {redis_conn_id!r}, which is not defined: "
                "create that Redis connection (type redis: host, port, password, extra db)"
            ) from None
        return RedisRequestPacer(key, rpm, redis_url_from_connection(redis_conn))

    def _post(
        self,
        path: str,
        *,
        deployment: str,
        prompt: str,
        json_body: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> MaiImage:
        """POST with retries; return the decoded image or raise the mapped :class:`MaiError`."""
        import requests

        s = self.settings
        url = s.endpoint + path
        policy = self.retry_policy
        attempts = 0
        refreshed = False
        while True:
            attempts += 1
            retry_after: float | None = None
            self._pace(deployment)
            try:
                response = self._session.post(
                    url,
                    headers=self._auth_headers(),
                    json=json_body,
                    data=form,
                    files=files,
                    timeout=(CONNECT_TIMEOUT, s.timeout),
                    stream=True,
                )
                try:
                    content = _read_body(response)  # a truncated body raises here and is retried
                finally:
                    response.close()
            except requests.exceptions.SSLError as exc:
                raise MaiConfigurationError(
                    f"TLS verification of {s.endpoint} failed ({type(exc).__name__}); for a "
                    "TLS-inspecting proxy set the connection extra 'ca_bundle'",
                    attempts=attempts,
                ) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                failure: MaiError = MaiTransientError(
                    f"no complete answer from {url} for deployment {deployment!r} after {attempts} "
                    f"attempt(s): {type(exc).__name__}",
                    attempts=attempts,
                )
            else:
                status = response.status_code
                if status == 200:
                    # Hand the only reference over, so the parser can free the raw body early.
                    handed = [content]
                    del content
                    try:
                        return self._parse_image(handed, response.headers, deployment, prompt)
                    except MaiResponseError as exc:
                        exc.attempts = attempts
                        failure = exc
                elif status == 401 and s.auth_type == "entra_id" and not refreshed:
                    # The cached token may have been revoked or expired early: fetch one fresh token once.
                    refreshed = True
                    self._bearer_token(force_refresh=True)
                    self.log.warning(
                        "MAI answered 401 with an Entra ID token; retrying once with a new token"
                    )
                    continue
                else:
                    failure = error_for_response(
                        status_code=status,
                        content=content,
                        headers=response.headers,
                        endpoint=s.endpoint,
                        deployment=deployment,
                        attempts=attempts,
                    )
                    if status == 429 or status == 503:
                        retry_after = retry_after_seconds(response.headers)
            if not failure.retryable:
                raise failure
            if attempts > policy.max_retries:
                raise failure
            wait = policy.delay(attempts, retry_after)
            self.log.warning(
                "MAI %s for deployment %r failed (attempt %d of %d: %s); retrying in %.1f s",
                path.rsplit("/", 1)[-1],
                deployment,
                attempts,
                policy.max_retries + 1,
                failure.status_code or type(failure).__name__,
                wait,
            )
            self.sleep(wait)

    @staticmethod
    def _parse_image(
        handed: list[bytes | bytearray], headers: Mapping[str, str], deployment: str, prompt: str
    ) -> MaiImage:
        """Turn a 200 body (handed over in a list, so it can be freed early) into a MaiImage.

        Anything unusable is a MaiResponseError (retried). Memory: the raw body is decoded to text
        and dropped before parsing, so at most two copies of the image (in base64 or raw) are alive
        at any moment - json.loads on bytes would hold three.
        """
        content = handed.pop()
        request_id = request_id_from(headers)

        def broken(why: str) -> MaiResponseError:
            return MaiResponseError(
                f"the service answered 200 for deployment {deployment!r} but {why}",
                status_code=200,
                request_id=request_id,
            )

        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text:
            snippet = " ".join(content[:80].decode("utf-8", "replace").split())
            raise broken(f"the body is not JSON (starts {snippet!r})")
        del content
        try:
            body = json.loads(text)
        except ValueError:
            snippet = " ".join(text[:80].split())
            raise broken(f"the body is not JSON (starts {snippet!r})") from None
        del text  # the parsed copy is all we need from here on
        if not isinstance(body, dict) or not isinstance(body.get("data"), list) or not body["data"]:
            raise broken("the body has no 'data' list with an image")
        first = body["data"][0]
        encoded = first.get("b64_json") if isinstance(first, dict) else None
        if not isinstance(encoded, str) or not encoded:
            raise broken("data[0] has no 'b64_json' string")
        first["b64_json"] = None  # drop the text reference early; the bytes replace it
        try:
            png = _b64decode(encoded)
        except (binascii.Error, ValueError):
            raise broken("data[0].b64_json is not valid base64") from None
        del encoded
        try:
            width, height = png_size(png)
        except ValueError:
            raise broken("the decoded image is not a PNG") from None
        extra = {k: v for k, v in body.items() if k != "data"}
        usage = extra.get("usage")
        if not isinstance(usage, dict):
            usage = {k: extra[k] for k in ("num_output_tokens",) if k in extra} or None
        return MaiImage(
            png=png,
            width=width,
            height=height,
            model=str(body.get("model") or deployment),
            prompt=prompt,
            deployment=deployment,
            request_id=request_id,
            usage=usage,
            response=extra,
        )

    # -- public API ---------------------------------------------------------------------------

    def generate_image(
        self,
        prompt: str,
        *,
        width: int = 1024,
        height: int = 1024,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> MaiImage:
        """Generate one PNG from a text prompt.

        :param prompt: what to draw (non-empty).
        :param width: pixels, >= 768; width * height <= 1,048,576. The service may snap to 16.
        :param height: pixels, >= 768.
        :param model: the deployment name; defaults to the connection's ``deployment`` extra.
        :param extra_params: more JSON fields for newer models (e.g. ``auto_aspect_ratio``); they
            cannot override ``model``, ``prompt``, ``width`` or ``height``.
        """
        prompt = validate_prompt(prompt)
        w, h = validate_size(width, height)
        extras = _check_extra_params(extra_params, reserved=RESERVED_PARAMS | {"width", "height"})
        deployment = self._deployment(model)
        body = {**extras, "model": deployment, "prompt": prompt, "width": w, "height": h}
        return self._post(GENERATIONS_PATH, deployment=deployment, prompt=prompt, json_body=body)

    def edit_image(
        self,
        image: ImageSource,
        prompt: str,
        *,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> MaiImage:
        """Edit an image with a text prompt (MAI-Image-2.5 and 2.5-Flash deployments).

        :param image: PNG or JPEG as bytes, a local path, an fsspec URI (``file://``, ``s3://``,
            ``abfs://``...), an ``ObjectStoragePath``, or the result dict of an upstream MAI task.
        :param prompt: the edit to make (non-empty).
        :param model: the deployment name; defaults to the connection's ``deployment`` extra.
        :param extra_params: more form fields for newer models; ``width``/``height`` here are
            checked against the size rule. They cannot override ``model``, ``prompt`` or ``image``.
        """
        from airflow_provider_mai.storage import read_image_source

        prompt = validate_prompt(prompt)
        extras = _check_extra_params(extra_params, reserved=RESERVED_PARAMS)
        if "width" in extras or "height" in extras:
            extras["width"], extras["height"] = validate_size(extras.get("width"), extras.get("height"))
        data = read_image_source(image).data
        mime = validate_edit_image(data)
        deployment = self._deployment(model)
        form = {**{k: _form_value(v) for k, v in extras.items()}, "model": deployment, "prompt": prompt}
        files = {"image": (_EDIT_FILENAMES[mime], bytes(data), mime)}
        return self._post(EDITS_PATH, deployment=deployment, prompt=prompt, form=form, files=files)

    def test_connection(self) -> tuple[bool, str]:
        """Prove endpoint, credentials and deployment without generating an image.

        Sends a generation request that is deliberately below the minimum size (16x16). The
        service checks credentials and the deployment before the size, so a 400 about the size
        proves all three and no image is made (or billed).
        """
        try:
            s = self.settings
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        deployment = s.deployment or "airflow-connection-test"
        try:
            body = {"model": deployment, "prompt": "connection test", "width": 16, "height": 16}
            self._post(GENERATIONS_PATH, deployment=deployment, prompt="connection test", json_body=body)
        except MaiError as exc:
            if exc.status_code == 400:
                return (
                    True,
                    f"Connected to {s.endpoint}: credentials accepted, deployment {deployment!r} found.",
                )
            if exc.status_code == 404 and not s.deployment:
                return True, (
                    f"Connected to {s.endpoint}: credentials accepted. No default deployment is set, "
                    "so none was checked (tasks must pass model=...)."
                )
            return False, str(exc)
        except Exception as exc:  # the Test button must answer, never raise
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Connected to {s.endpoint}; deployment {deployment!r} answered."

    # -- connection form for Airflow < 3.2 (3.2+ reads the same fields from get_provider_info) --

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Connection form fields for Airflow < 3.2 (3.2+ reads ``CONN_FIELDS`` from provider info)."""
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import Optional

        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            schema = spec["schema"]
            if schema.get("format") == "password":
                widgets[name] = PasswordField(spec["label"], description=spec["description"])
            elif "integer" in schema["type"]:
                widgets[name] = IntegerField(
                    spec["label"], validators=[Optional()], description=spec["description"]
                )
            else:
                widgets[name] = StringField(spec["label"], description=spec["description"])
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the connection form (older 3.x)."""
        return {
            "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
            "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
            "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
        }


def _check_extra_params(
    extra_params: Mapping[str, Any] | None, *, reserved: frozenset[str]
) -> dict[str, Any]:
    if extra_params is None:
        return {}
    if not isinstance(extra_params, Mapping):
        raise MaiValidationError(f"extra_params must be a dict, got {type(extra_params).__name__}")
    clash = sorted(reserved & set(extra_params))
    if clash:
        raise MaiValidationError(
            f"extra_params cannot set {', '.join(clash)}: pass them as the call's own arguments"
        )
    return dict(extra_params)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _read_body(response: requests.Response) -> bytes | bytearray:
    """The whole body in one buffer.

    With a known length and no content encoding it is read in place into one preallocated buffer:
    no list of chunks joined into a second copy (a 1024x1024 answer is ~2.2 MB of base64).
    """
    import requests
    import urllib3

    length = response.headers.get("content-length", "")
    if not length.isdigit() or response.headers.get("content-encoding"):
        return b"".join(response.iter_content(chunk_size=1 << 20))
    buffer = bytearray(int(length))
    view = memoryview(buffer)
    filled = 0
    try:
        while filled < len(buffer):
            count = response.raw.readinto(view[filled:])
            if not count:
                raise requests.exceptions.ChunkedEncodingError(f"body ended after {filled} of {length} bytes")
            filled += count
    except urllib3.exceptions.HTTPError as exc:  # cut off or timed out mid-body: transient
        raise requests.exceptions.ChunkedEncodingError(type(exc).__name__) from None
    finally:
        view.release()
    return buffer


def _b64decode(text: str) -> bytes:
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)  # strict, and no copy of the text
    return base64.b64decode(text, validate=True)


def _version() -> str:
    from airflow_provider_mai import __version__

    return __version__
