"""What an answer means: a :class:`MaiImage`, or the typed :class:`MaiError` to raise.

The one place where statuses, bodies and transport failures become errors, for both transports.
No I/O: it reads an :class:`~airflow_provider_mai.client.transport.Answer` (status, headers, the
bounded body) or a :class:`~airflow_provider_mai.client.transport.TransportError`.

- "Possibly billed" is decided here, once: a failure after the service had the whole request (a
  5xx, a timeout or a drop after sending, a broken 200 body) may have made and billed an image.
- The service's own text is quoted on one line and bounded; transport text never is (it can quote
  header values, the API key among them).
- A PNG is accepted only as the service documents it: strict base64, a real PNG header.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_mai.api import EDIT_MODELS_TEXT, ENTRA_SCOPE, MAX_PIXELS, MIN_SIDE
from airflow_provider_mai.client.retry import RETRY_AFTER_STATUSES, RETRYABLE_STATUSES, retry_after_seconds
from airflow_provider_mai.client.transport import Answer, TransportError
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiBadRequestError,
    MaiConfigurationError,
    MaiContentFilterError,
    MaiError,
    MaiNotFoundError,
    MaiPermanentError,
    MaiRateLimitError,
    MaiResponseError,
    MaiResponseTooLargeError,
    MaiTransientError,
)
from airflow_provider_mai.models import ImageRequest, MaiImage
from airflow_provider_mai.validation import check_png_structure

if TYPE_CHECKING:
    from airflow_provider_mai.client.settings import MaiSettings

#: Error codes the service (and Azure OpenAI) use for content filtering.
CONTENT_FILTER_CODES = frozenset(
    {"content_safety_violation", "content_filter", "contentfilter", "responsibleaipolicyviolation"}
)
#: Response headers that may carry the service's request id, most specific first.
REQUEST_ID_HEADERS = ("x-ms-request-id", "apim-request-id", "x-request-id")
#: The longest piece of the service's own error text quoted in a message.
MAX_QUOTED_CHARS = 300
#: What of the service's ``usage`` is kept: it travels to XCom, sidecars and lineage, so it is bounded.
MAX_USAGE_ENTRIES = 32


def checked(
    outcome: Answer | TransportError,
    *,
    settings: MaiSettings,
    path: str,
    deployment: str,
    attempt: int,
) -> Answer:
    """The answer of one exchange if it is a 200; else raise the error it means."""
    if isinstance(outcome, TransportError):
        raise transport_error(outcome, settings=settings, path=path, deployment=deployment, attempt=attempt)
    if outcome.status != 200:
        raise answer_error(outcome, settings=settings, deployment=deployment, attempt=attempt)
    return outcome


def answer_error(answer: Answer, *, settings: MaiSettings, deployment: str, attempt: int) -> MaiError:
    """The error a non-200 answer means, with the wait the service asked for (429, 503)."""
    error = error_for_response(
        status_code=answer.status,
        content=answer.body,
        headers=answer.headers,
        endpoint=settings.endpoint,
        deployment=deployment,
        attempts=attempt,
        conn_id=settings.conn_id,
    )
    if answer.status in RETRY_AFTER_STATUSES:
        error.retry_after = retry_after_seconds(answer.headers)
    return error


def transport_error(
    exc: TransportError, *, settings: MaiSettings, path: str, deployment: str, attempt: int
) -> MaiError:
    """The error an exchange without a usable answer means (its text is ours, never the stack's)."""
    s = settings
    url = s.endpoint + path
    common: dict[str, Any] = {"attempts": attempt, "possibly_billed": exc.sent}
    if exc.kind == "tls":
        hint = (
            f"the CA bundle {s.ca_bundle!r} (extra 'ca_bundle') does not vouch for it"
            if s.ca_bundle
            else "for a TLS-inspecting proxy set the connection extra 'ca_bundle'"
        )
        return MaiConfigurationError(
            f"connection {s.conn_id!r}: TLS verification of {s.endpoint} failed: {hint}", **common
        )
    if exc.kind == "invalid":
        return MaiConfigurationError(
            f"connection {s.conn_id!r}: {exc.reason}: check its host and credentials", **common
        )
    if exc.kind == "too_large":
        return MaiResponseTooLargeError(
            f"{url} for deployment {deployment!r} (connection {s.conn_id!r}): {exc.reason}", **common
        )
    if exc.kind == "broken":
        return MaiResponseError(f"{url} for deployment {deployment!r}: {exc.reason}", **common)
    if exc.kind == "connect":
        return MaiTransientError(f"nothing answered at {s.endpoint}: {exc.reason}", **common)
    return MaiTransientError(
        f"no complete answer from {url} for deployment {deployment!r} after {attempt} attempt(s): "
        f"{exc.reason}",
        **common,
    )


def image(answer: Answer, request: ImageRequest, attempt: int) -> MaiImage:
    """The image of a 200 answer; an unusable body is a (possibly billed) :class:`MaiResponseError`."""
    try:
        return parse_image(answer, request, attempt)
    except MaiResponseError as exc:
        exc.attempts = attempt
        exc.possibly_billed = True
        raise


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
        width, height = check_png_structure(png)
    except ValueError as exc:
        raise broken(f"the decoded image is not a PNG within bounds: {exc}") from None
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
    conn_id: str,
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
            f"The service at {endpoint} forbids the request of connection {conn_id!r} (403): {said}. "
            "Check the resource's network rules (firewall, private endpoint) and the identity's role "
            "assignment.",
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
