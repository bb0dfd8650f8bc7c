"""MaiClient: the one request path to a MAI image deployment. No Airflow inside.

Usable on its own (a script, a notebook, another orchestrator)::

    settings = MaiSettings.from_connection("mine", host="https://res.services.ai.azure.com",
                                           password=key, extra={"deployment": "my-mai-image-2-5"})
    client = MaiClient(settings)
    image = client.send(GenerateRequest("a red kite", 1024, 1024, deployment="my-mai-image-2-5"))

Each call: pace (when the connection states its quota), send once within the deadline
(:mod:`~airflow_provider_mai.transport`), turn the answer into a :class:`MaiImage` or a
:class:`MaiError` (:mod:`~airflow_provider_mai.exceptions`), and retry what can succeed with
capped, jittered backoff (:mod:`~airflow_provider_mai.retry`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.api import EDITS_PATH, GENERATIONS_PATH
from airflow_provider_mai.auth import Credentials
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiError,
    MaiResponseError,
    MaiResponseTooLargeError,
    MaiTransientError,
    error_for_response,
    request_id_from,
)
from airflow_provider_mai.models import EditRequest, GenerateRequest, ImageRequest, MaiImage
from airflow_provider_mai.retry import RetryPolicy, retry_after_seconds
from airflow_provider_mai.validation import png_size

if TYPE_CHECKING:
    import requests
    from azure.core.credentials import TokenCredential

    from airflow_provider_mai.settings import MaiSettings
    from airflow_provider_mai.transport import Answer, TransportError

#: The name of the image file part in an edit (the service reads the type from its content type).
_EDIT_FILENAMES = {"image/png": "image.png", "image/jpeg": "image.jpg"}
#: The connection test waits this long at most for an answer, and this long for a connection.
PROBE_TIMEOUT = 10.0
PROBE_CONNECT_TIMEOUT = 5.0


class MaiClient:
    """Sends image requests to one MAI endpoint: auth, pacing, one request path, retries, parsing.

    :param settings: the connection, read and checked (:class:`~airflow_provider_mai.settings.MaiSettings`).
    :param credential: an azure-identity ``TokenCredential`` to use for Entra ID instead of the one
        the settings describe.
    :param sleep: how to wait (backoff, pacing); tests pass a recorder.
    :param log: where retries and pacing are reported (a logger; default this module's).
    :param on_secret: called with every secret the client starts using (e.g. a log masker).
    :param pacer_factory: builds the send-slot schedule of one quota key (``endpoint|deployment``)
        when the settings state ``rpm``: any object with ``reserve() -> seconds to wait``. Default:
        :class:`~airflow_provider_mai.pacing.RequestPacer`, a locked file shared on this host.
    """

    def __init__(
        self,
        settings: MaiSettings,
        *,
        credential: TokenCredential | None = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Any = None,
        on_secret: Callable[[str], None] | None = None,
        pacer_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = Credentials(settings, credential=credential, on_secret=on_secret)
        self.retry_policy = RetryPolicy(
            settings.max_retries, settings.retry_base_delay, settings.retry_max_delay
        )
        self._sleep = sleep
        self.log = log or logging.getLogger(__name__)
        self._pacer_factory = pacer_factory
        self._pacers: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.settings.endpoint!r})"

    @cached_property
    def session(self) -> requests.Session:
        """The pooled HTTP session (keep-alive across calls)."""
        from airflow_provider_mai import __version__
        from airflow_provider_mai.transport import new_session

        return new_session(f"airflow-provider-mai/{__version__}")

    def close(self) -> None:
        """Close pooled connections."""
        if "session" in self.__dict__:
            self.session.close()

    # -- the public calls -----------------------------------------------------------------------

    def send(self, request: ImageRequest) -> MaiImage:
        """Send a (validated) request, retrying what can succeed; the image, or the mapped error."""
        path, body = _encode(request)
        attempts = 0
        refreshed = False
        while True:
            attempts += 1
            self._pace(request.deployment)
            try:
                return self._image(
                    self._exchange(path, body, request.deployment, attempts), request, attempts
                )
            except MaiError as failure:
                if failure.status_code == 401 and self.credentials.refreshable and not refreshed:
                    # The cached token may have been revoked or expired early: fetch one fresh token once.
                    refreshed = True
                    self.credentials.headers(force_refresh=True)
                    self.log.warning(
                        "MAI answered 401 with an Entra ID token; retrying once with a new token"
                    )
                    continue
                self._sleep(self._backoff(failure, path, request.deployment, attempts))

    def probe(self, deployment: str) -> MaiError | None:
        """One quick request that proves endpoint, credentials and deployment without making an image.

        A generation deliberately below the minimum size (16x16): the service checks credentials and
        the deployment before the size, so a 400 about the size proves all three. One attempt, at
        most :data:`PROBE_TIMEOUT` seconds. Returns the error the service answered with (a 400 is the
        good outcome); raises :class:`MaiError` when nothing usable answered.
        """
        body = {"json_body": {"model": deployment, "prompt": "connection test", "width": 16, "height": 16}}
        try:
            self._exchange(GENERATIONS_PATH, body, deployment, 1, probe=True)
        except MaiError as failure:
            if failure.status_code is None:
                raise
            return failure
        return None

    # -- one attempt ----------------------------------------------------------------------------

    def _exchange(
        self,
        path: str,
        body: Mapping[str, Any],
        deployment: str,
        attempt: int,
        probe: bool = False,
    ) -> Answer:
        """One HTTP exchange; a non-200 answer becomes its MaiError, a broken one a transient error.

        :param probe: a connection test: shorter waits for the connection and the answer.
        """
        from airflow_provider_mai.transport import TransportError, exchange

        s = self.settings
        try:
            answer = exchange(
                self.session,
                s.endpoint + path,
                headers=self.credentials.headers(),
                timeout=min(PROBE_TIMEOUT, s.timeout) if probe else s.timeout,
                connect_timeout=min(PROBE_CONNECT_TIMEOUT, s.connect_timeout) if probe else s.connect_timeout,
                max_body=s.max_response_bytes,
                verify=s.ca_bundle or True,
                **body,
            )
        except TransportError as exc:
            raise self._transport_error(exc, path, deployment, attempt) from None
        if answer.status != 200:
            raise self._answer_error(answer, deployment, attempt)
        return answer

    def _answer_error(self, answer: Answer, deployment: str, attempt: int) -> MaiError:
        error = error_for_response(
            status_code=answer.status,
            content=answer.body,
            headers=answer.headers,
            endpoint=self.settings.endpoint,
            deployment=deployment,
            attempts=attempt,
            conn_id=self.settings.conn_id,
        )
        if answer.status in (429, 503):
            error.retry_after = retry_after_seconds(answer.headers)
        return error

    def _transport_error(self, exc: TransportError, path: str, deployment: str, attempt: int) -> MaiError:
        s = self.settings
        url = s.endpoint + path
        common: dict[str, Any] = {"attempts": attempt, "possibly_billed": exc.sent}
        if exc.kind == "tls":
            hint = (
                f"the CA bundle {s.ca_bundle!r} (extra 'ca_bundle') does not vouch for it"
                if s.ca_bundle
                else "for a TLS-inspecting proxy set the connection extra 'ca_bundle'"
            )
            return MaiConfigurationError(f"TLS verification of {s.endpoint} failed: {hint}", **common)
        if exc.kind == "invalid":
            return MaiConfigurationError(
                f"connection {s.conn_id!r}: {exc.reason}: check its host and credentials", **common
            )
        if exc.kind == "too_large":
            return MaiResponseTooLargeError(f"{url} for deployment {deployment!r}: {exc.reason}", **common)
        if exc.kind == "broken":
            return MaiResponseError(f"{url} for deployment {deployment!r}: {exc.reason}", **common)
        if exc.kind == "connect":
            return MaiTransientError(f"nothing answered at {s.endpoint}: {exc.reason}", **common)
        return MaiTransientError(
            f"no complete answer from {url} for deployment {deployment!r} after {attempt} attempt(s): "
            f"{exc.reason}",
            **common,
        )

    def _image(self, answer: Answer, request: ImageRequest, attempts: int) -> MaiImage:
        try:
            return parse_image(answer, request, attempts)
        except MaiResponseError as exc:
            exc.attempts = attempts
            exc.possibly_billed = True
            raise

    # -- pacing and backoff ---------------------------------------------------------------------

    def _pace(self, deployment: str) -> None:
        """With a stated quota (extra ``rpm``), wait for this deployment's next free send slot."""
        rpm = self.settings.rpm
        if not rpm:
            return
        pacer = self._pacers.get(deployment)
        if pacer is None:
            key = f"{self.settings.endpoint}|{deployment}"
            if self._pacer_factory is not None:
                pacer = self._pacer_factory(key)
            else:
                from airflow_provider_mai.pacing import RequestPacer

                pacer = RequestPacer(key, rpm, self.settings.rpm_state_dir)
            self._pacers[deployment] = pacer
        from airflow_provider_mai.pacing import PacingStateError

        try:
            wait = pacer.reserve()
        except PacingStateError as exc:
            raise MaiConfigurationError(
                f"connection {self.settings.conn_id!r}: {exc}; pacing needs a private folder "
                "(extra 'rpm_state_dir')"
            ) from None
        if wait > 0:
            self.log.info(
                "Pacing deployment %r at %g requests/minute: sending in %.1f s", deployment, rpm, wait
            )
            self._sleep(wait)

    def _backoff(self, failure: MaiError, path: str, deployment: str, attempts: int) -> float:
        """Seconds to wait before retrying ``failure``; raises it when it must not be retried."""
        policy = self.retry_policy
        if not failure.retryable or attempts > policy.max_retries:
            raise failure
        if failure.possibly_billed and not self.settings.retry_sent_requests:
            failure.message += (
                " The request had reached the service, which may have made (and billed) the image: "
                "not retried because the connection sets retry_sent_requests=false."
            )
            raise failure
        wait = policy.delay(attempts, failure.retry_after)
        self.log.warning(
            "MAI %s for deployment %r failed (attempt %d of %d: %s)%s; retrying in %.1f s",
            path.rsplit("/", 1)[-1],
            deployment,
            attempts,
            policy.max_retries + 1,
            failure.status_code or type(failure).__name__,
            " after the request was sent: the service may have billed it" if failure.possibly_billed else "",
            wait,
        )
        return wait


def _encode(request: ImageRequest) -> tuple[str, dict[str, Any]]:
    """The path and body of a request: JSON for generations, multipart form for edits."""
    if isinstance(request, GenerateRequest):
        body = {
            **request.extra_params,
            "model": request.deployment,
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
        }
        return GENERATIONS_PATH, {"json_body": body}
    assert isinstance(request, EditRequest)
    form = {
        **{k: _form_value(v) for k, v in request.extra_params.items()},
        "model": request.deployment,
        "prompt": request.prompt,
    }
    files = {"image": (_EDIT_FILENAMES[request.mime_type], request.image, request.mime_type)}
    return EDITS_PATH, {"form": form, "files": files}


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def parse_image(answer: Answer, request: ImageRequest, attempts: int = 1) -> MaiImage:
    """Turn a 200 answer into a :class:`MaiImage`; anything unusable is a :class:`MaiResponseError`.

    Memory: the body is taken from the answer, decoded to text and dropped before parsing, so at
    most two copies of the image (in base64 or raw) are alive at any moment - json.loads on bytes
    would hold three.
    """
    request_id = request_id_from(answer.headers)
    body = answer.take_body()
    deployment = request.deployment

    def broken(why: str) -> MaiResponseError:
        return MaiResponseError(
            f"the service answered 200 for deployment {deployment!r} but {why}",
            status_code=200,
            request_id=request_id,
        )

    def starts(text: str) -> str:
        return " ".join(text[:80].split())

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise broken(
            f"the body is not JSON (starts {starts(body[:80].decode('utf-8', 'replace'))!r})"
        ) from None
    del body
    try:
        parsed = json.loads(text)
    except ValueError:
        raise broken(f"the body is not JSON (starts {starts(text)!r})") from None
    del text  # the parsed copy is all we need from here on
    if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list) or not parsed["data"]:
        raise broken("the body has no 'data' list with an image")
    first = parsed["data"][0]
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
    extra = {k: v for k, v in parsed.items() if k != "data"}
    usage = extra.get("usage")
    if not isinstance(usage, dict):
        usage = {k: extra[k] for k in ("num_output_tokens",) if k in extra}
    model = extra.get("model")
    return MaiImage(
        png=png,
        width=width,
        height=height,
        model=str(model)[:200] if model else deployment,
        prompt=request.prompt,
        deployment=deployment,
        request_id=request_id,
        usage=_bounded_usage(usage),
        response=extra,
        attempts=attempts,
    )


#: What of the service's ``usage`` is kept: it travels to XCom, sidecars and lineage, so it is bounded.
MAX_USAGE_ENTRIES = 32


def _bounded_usage(usage: Mapping[str, Any]) -> dict[str, int | float] | None:
    """The service's token counts: numeric entries under short names, at most
    :data:`MAX_USAGE_ENTRIES` (a real answer has three); anything else is not a count and is dropped."""
    kept = {
        key: value
        for key, value in usage.items()
        if isinstance(key, str)
        and len(key) <= 64
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    }
    return dict(list(kept.items())[:MAX_USAGE_ENTRIES]) or None


def _b64decode(text: str) -> bytes:
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)  # strict, and no copy of the text
    return base64.b64decode(text, validate=True)
