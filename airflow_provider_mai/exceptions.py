"""Errors raised by the MAI provider, and the one place where HTTP answers become errors.

Every error is a :class:`MaiError` (an ``AirflowException``). Errors that cannot succeed on a
rerun - bad input, content filtered, bad credentials, unknown deployment, a redirect - also derive
from ``AirflowFailException``, so Airflow fails the task at once instead of spending task retries
(and quota) on them. Transient failures are retried inside the client; when retries run out,
:class:`MaiTransientError` says how many attempts were made and what the last answer was.

Without Airflow (the client used on its own) the same classes derive from plain exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_mai.api import EDIT_MODELS_TEXT, ENTRA_SCOPE, MAX_PIXELS, MIN_SIDE

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # the client used without Airflow: same hierarchy, plain bases

    class AirflowException(Exception):  # type: ignore[no-redef]
        """Stands in for Airflow's base exception when Airflow is not installed."""

    class AirflowFailException(AirflowException):  # type: ignore[no-redef]
        """Stands in for Airflow's no-retry exception when Airflow is not installed."""


#: Error codes the service (and Azure OpenAI) use for content filtering.
CONTENT_FILTER_CODES = frozenset(
    {"content_safety_violation", "content_filter", "contentfilter", "responsibleaipolicyviolation"}
)
#: Response headers that may carry the service's request id, most specific first.
REQUEST_ID_HEADERS = ("x-ms-request-id", "apim-request-id", "x-request-id")
#: Statuses worth another attempt.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: The longest piece of the service's own error text quoted in a message.
MAX_QUOTED_CHARS = 300


class MaiError(AirflowException):
    """Base class of every error raised by the MAI provider.

    :param message: what went wrong and what to fix.
    :param status_code: the HTTP status of the service's answer, or None when no answer applies.
    :param error_code: the ``code`` from the service's error body, when it sent one.
    :param request_id: the service's request id, for support tickets, when known.
    :param attempts: how many HTTP requests were made for this call (0 when none was sent).
    :param possibly_billed: the request reached the service in full before this failure (a
        timeout, a cut-off answer, a 5xx): the service may have made and billed an image.
    :param retry_after: seconds the service asked us to wait before another attempt, if it said.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        attempts: int = 0,
        possibly_billed: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # AirflowException declares an HTTPStatus here (for the REST API); ours is the service's status.
        self.status_code = status_code  # type: ignore[assignment]
        self.error_code = error_code
        self.request_id = request_id
        self.attempts = attempts
        self.possibly_billed = possibly_billed
        self.retry_after = retry_after

    def __str__(self) -> str:
        details = []
        if self.status_code is not None:
            details.append(f"status {self.status_code}")
        if self.error_code:
            details.append(f"code {self.error_code}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.attempts > 1:
            details.append(f"{self.attempts} attempts")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, request_id={self.request_id!r}, attempts={self.attempts!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep errors picklable (Airflow and multiprocessing pickle exceptions) with their fields.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[MaiError], message: str, state: dict[str, Any]) -> MaiError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class MaiPermanentError(MaiError, AirflowFailException):
    """A failure that a retry cannot fix; Airflow fails the task without task retries."""


class MaiValidationError(MaiPermanentError, ValueError):
    """The input breaks a documented rule; nothing was sent to the service."""


class MaiConfigurationError(MaiPermanentError):
    """The Airflow connection is unusable (missing host, clear-text remote endpoint, bad extra)."""


class MaiOutputExistsError(MaiPermanentError):
    """The output location already holds an image and ``if_exists="fail"`` was asked for."""


class MaiBadRequestError(MaiPermanentError):
    """The service answered 400: the request is invalid (size rules, unsupported parameter...)."""


class MaiContentFilterError(MaiBadRequestError):
    """The service's content filter blocked the prompt or the image.

    :param label: the filter label the service gave (e.g. ``MultiSeverity_ViolenceScore``), if any.
    """

    def __init__(self, message: str, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.label = label


class MaiAuthenticationError(MaiPermanentError):
    """The service answered 401 or 403: the key, token or network rules refuse us."""


class MaiNotFoundError(MaiPermanentError):
    """The service answered 404: wrong endpoint or deployment name."""


class MaiTransientError(MaiError):
    """A transient failure (429, 408, 5xx, dropped connection, broken body) that outlasted the retries."""

    retryable = True


class MaiRateLimitError(MaiTransientError):
    """The deployment's requests-per-minute quota was exceeded (429) on every attempt."""


class MaiResponseError(MaiTransientError):
    """The service answered 200 with a body that is not a usable image answer, or broke HTTP."""


class MaiResponseTooLargeError(MaiResponseError):
    """An answer larger than the connection's ``max_response_mb`` (after decompression).

    Not retried: a service that answers with more than any image needs will do it again.
    """

    retryable = False


def error_body(content: bytes | bytearray) -> tuple[str | None, str | None, str | None]:
    """Read ``(code, message, details)`` from an Azure-style error body; tolerate anything else."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error", body)
    if not isinstance(error, Mapping):
        return None, str(error), None
    code = error.get("code")
    message = error.get("message")
    details = error.get("details")
    inner = error.get("innererror") or error.get("inner_error")
    if isinstance(inner, Mapping) and inner.get("code"):
        # Azure OpenAI nests the precise reason (ResponsibleAIPolicyViolation) one level down.
        inner_code = str(inner["code"])
        if inner_code.lower() in CONTENT_FILTER_CODES:
            code = inner_code
    return (
        str(code) if code is not None else None,
        str(message) if message is not None else None,
        details if isinstance(details, str) else (json.dumps(details) if details else None),
    )


def one_line(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` on one line (whitespace runs and control characters collapsed), cut to ``limit``."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 4])
    flat = " ".join(cleaned.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def request_id_from(headers: Mapping[str, str]) -> str | None:
    """The service's request id from response headers, if it sent one (one line, bounded)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return one_line(value, 100)
    return None


def _filter_label(message: str | None, details: str | None) -> str | None:
    for text in (message, details):
        if text and "label '" in text:
            return one_line(text.split("label '", 1)[1].split("'", 1)[0], 100) or None
    return None


def _said(message: str | None, content: bytes | bytearray) -> str:
    """What the service said, quoted as one bounded line without a closing full stop."""
    text = message if message else content[: MAX_QUOTED_CHARS * 4].decode("utf-8", "replace")
    return one_line(text).rstrip(".") or "<empty body>"


def _redirect_target(headers: Mapping[str, str]) -> str:
    """The host a redirect points to (never its path or query, which may carry tokens)."""
    location = headers.get("location") or ""
    try:
        host = urlsplit(location[:2048].strip()).hostname
    except ValueError:
        host = None
    return one_line(host, 255) if host else "another location"


def error_for_response(
    *,
    status_code: int,
    content: bytes | bytearray,
    headers: Mapping[str, str],
    endpoint: str,
    deployment: str,
    attempts: int,
    conn_id: str = "mai_default",
) -> MaiError:
    """Map a non-200 answer to the error a caller should see. The only place statuses become errors."""
    code, message, details = error_body(content)
    request_id = request_id_from(headers)
    said = _said(message, content)
    common: dict[str, Any] = {
        "status_code": status_code,
        "error_code": one_line(code, 100) if code else None,
        "request_id": request_id,
        "attempts": attempts,
        # A rate limit or a request timeout comes before any work: nothing was made or billed.
        "possibly_billed": status_code >= 500,
    }
    if 300 <= status_code < 400:
        return MaiConfigurationError(
            f"The endpoint {endpoint} of connection {conn_id!r} answered {status_code}, a redirect "
            f"to {_redirect_target(headers)}. Redirects are never followed (they would carry the key "
            "elsewhere): set the connection host to the endpoint itself, "
            "https://<resource>.services.ai.azure.com.",
            **common,
        )
    if code and code.lower() in CONTENT_FILTER_CODES:
        label = _filter_label(message, details)
        return MaiContentFilterError(
            f"The service's content filter blocked the request to deployment {deployment!r}"
            f"{f' (label {label})' if label else ''}: {said}. Change the prompt or image; "
            "blocking is not retried automatically - rerun the task to try again.",
            label=label,
            **common,
        )
    if status_code == 400:
        return MaiBadRequestError(
            f"The service rejected the request to deployment {deployment!r} as invalid: {said}. "
            f"Sizes must be at least {MIN_SIDE} px on each side and at most {MAX_PIXELS:,} px in all; "
            f"only {EDIT_MODELS_TEXT} deployments accept edits.",
            **common,
        )
    if status_code == 401:
        return MaiAuthenticationError(
            f"The service at {endpoint} refused the credentials of connection {conn_id!r} (401): "
            f"{said}. Check the API key (connection password), or for Entra ID that the identity has "
            f"a Cognitive Services role and the token scope is {ENTRA_SCOPE}.",
            **common,
        )
    if status_code == 403:
        return MaiAuthenticationError(
            f"The service at {endpoint} forbids the request (403): {said}. Check the resource's "
            "network rules (firewall, private endpoint) and the identity's role assignment.",
            **common,
        )
    if status_code == 404:
        return MaiNotFoundError(
            f"Not found (404) at {endpoint} for deployment {deployment!r}: {said}. Check the host "
            f"of connection {conn_id!r} (https://<resource>.services.ai.azure.com) and the "
            "deployment name (the name chosen at deploy time, not the model name).",
            **common,
        )
    if status_code == 429:
        return MaiRateLimitError(
            f"Deployment {deployment!r} is over its requests-per-minute quota (429) after "
            f"{attempts} attempt(s): {said}. Lower the Airflow pool size or raise the quota tier.",
            **common,
        )
    if status_code in RETRYABLE_STATUSES or status_code >= 500:
        return MaiTransientError(
            f"The service at {endpoint} kept failing for deployment {deployment!r}: last answer "
            f"{status_code} after {attempts} attempt(s): {said}",
            **common,
        )
    return MaiPermanentError(
        f"Unexpected answer {status_code} from {endpoint} for deployment {deployment!r}: {said}",
        **common,
    )
