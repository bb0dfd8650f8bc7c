"""Edit inputs: an image read from bytes, a path, object storage, an upstream MAI result, or (only
when the connection allows it) a web URL - every read bounded by the connection's ``max_input_mb``.

A plain local path is a path: ``?`` and ``#`` in it are characters of a name, never a URL's query
or fragment (:func:`~airflow_provider_mai.storage.open_location`).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

from airflow_provider_mai.exceptions import MaiValidationError
from airflow_provider_mai.storage import open_location

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: What an edit accepts as its input image.
ImageSource = Union[bytes, bytearray, str, "os.PathLike[str]", "ObjectStoragePath", Mapping[str, Any]]

_HTTP_PROTOCOLS = frozenset({"http", "https"})
#: Seconds to read an opted-in web URL given as edit input.
WEB_INPUT_TIMEOUT = 60.0


@dataclass(frozen=True)
class LoadedImage:
    """Image bytes read from a source, and where they came from (None for inline bytes)."""

    data: bytes
    location: str | None


def read_image_source(
    source: ImageSource, *, max_bytes: int, allow_http: bool = False, conn_id: str | None = None
) -> LoadedImage:
    """Load edit input from bytes, a path, an fsspec URI, an ObjectStoragePath, or an upstream MAI
    result (``uri`` or ``b64_json``), reading at most ``max_bytes`` (+1, to notice more).

    :param max_bytes: the most to read (the connection's ``max_input_mb``).
    :param allow_http: read ``http(s)://`` URLs. Off by default: a template rendering a URL from
        upstream data would otherwise make the worker fetch any address.
    :param conn_id: the connection whose limits these are, named in errors.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return LoadedImage(_bounded(bytes(source), max_bytes, "edit input", conn_id), None)
    if isinstance(source, Mapping):
        if source.get("uri"):
            return read_image_source(
                str(source["uri"]), max_bytes=max_bytes, allow_http=allow_http, conn_id=conn_id
            )
        encoded = source.get("b64_json")
        if encoded:
            if not isinstance(encoded, str) or len(encoded) > (max_bytes + 3) // 3 * 4 + 4:
                raise _too_large("the upstream result's b64_json", max_bytes, conn_id)
            try:
                return LoadedImage(base64.b64decode(encoded, validate=True), None)
            except (binascii.Error, ValueError):
                raise MaiValidationError("the upstream result's b64_json is not valid base64") from None
        raise MaiValidationError(
            "the upstream result has neither 'uri' nor 'b64_json': pass a MAI operator's output, "
            "a path, a URI or image bytes"
        )
    if isinstance(source, str) and not source.strip():
        raise MaiValidationError("edit input path is empty")
    if isinstance(source, str) and source.split("://", 1)[0].lower() in _HTTP_PROTOCOLS:
        if not allow_http:
            raise _web_refused(source, conn_id)
        return LoadedImage(_fetch_web_input(source, max_bytes, conn_id), public_url(source))
    if isinstance(source, (str, os.PathLike)):
        path = open_location(source)
    elif hasattr(source, "open") and hasattr(source, "protocol"):  # ObjectStoragePath / UPath
        path = source
    else:
        raise MaiValidationError(
            f"edit input must be bytes, a path, a URI, an ObjectStoragePath or a MAI result; "
            f"got {type(source).__name__}"
        )
    if path.protocol in _HTTP_PROTOCOLS:
        if not allow_http:
            raise _web_refused(str(path), conn_id)
        return LoadedImage(_fetch_web_input(str(path), max_bytes, conn_id), public_url(str(path)))
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise MaiValidationError(f"edit input not found: {path}") from None
    except IsADirectoryError:
        raise MaiValidationError(f"edit input is a folder, not an image: {path}") from None
    return LoadedImage(_bounded(data, max_bytes, f"edit input {path}", conn_id), str(path))


def public_url(url: str) -> str:
    """A web URL as it may be shown and recorded: scheme, host and path - never user info, a query
    or a fragment, which may carry credentials (a presigned URL's signature)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<an unreadable URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"[:300]


def _connection(conn_id: str | None) -> str:
    return f"connection {conn_id!r}" if conn_id else "the connection"


def _web_refused(url: str, conn_id: str | None) -> MaiValidationError:
    url = public_url(url)
    return MaiValidationError(
        f"edit input {url!r} is a web URL: reading URLs is off, so a template cannot make the "
        "worker fetch any address. Copy the image to object storage, or let the owner of "
        f"{_connection(conn_id)} set its extra allow_http_inputs=true."
    )


def _fetch_web_input(url: str, max_bytes: int, conn_id: str | None) -> bytes:
    """GET an opted-in web URL with the provider's bounds: a deadline, the size cap, no redirects."""
    from airflow_provider_mai import __version__
    from airflow_provider_mai.client.transport import TransportError
    from airflow_provider_mai.client.transport.sync import exchange, new_session

    shown = public_url(url)
    session = new_session(f"airflow-provider-mai/{__version__}")
    try:
        answer = exchange(
            session,
            url,
            method="GET",
            headers={},
            timeout=WEB_INPUT_TIMEOUT,
            connect_timeout=10,
            max_body=max_bytes,
        )
    except TransportError as exc:
        if exc.kind == "too_large":
            raise _too_large(f"edit input {shown}", max_bytes, conn_id) from None
        raise MaiValidationError(f"edit input {shown!r} could not be read: {exc.reason}") from None
    finally:
        session.close()
    if answer.status != 200:
        raise MaiValidationError(f"edit input {shown!r} answered {answer.status}, not an image")
    return bytes(answer.take_body())


def _too_large(what: str, max_bytes: int, conn_id: str | None) -> MaiValidationError:
    return MaiValidationError(
        f"{what} is larger than {max_bytes / 1048576:g} MB, the max_input_mb of {_connection(conn_id)}: "
        "use a smaller image (the service scales edits to about one megapixel anyway)"
    )


def _bounded(data: bytes, max_bytes: int, what: str, conn_id: str | None) -> bytes:
    if len(data) > max_bytes:
        raise _too_large(what, max_bytes, conn_id)
    return data
