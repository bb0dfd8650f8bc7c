"""Image and sidecar reads from storage, within their bounds, checked against the result.

Locations are opened with :func:`~airflow_provider_mai.storage.open_location`, as the operators
wrote them (a local path stays literal, ``?`` and ``#`` included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.plugin.queries import inline_image
from airflow_provider_mai.plugin.trust import (
    MAX_IMAGE_BYTES,
    MAX_SIDECAR_BYTES,
    ImageUnavailableError,
    png_uri,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_mai.plugin.views import TaskImage

log = logging.getLogger(__name__)


def read_image(session: Session, image: TaskImage, *, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The PNG of an image, from its ``uri`` (through ObjectStoragePath) or from its XCom's
    ``b64_json``, checked against the result's sha256.

    :raises ImageUnavailableError: gone (404), too large (413), changed since the run (409),
        unreadable (502).
    """
    uri = png_uri(image.uri)
    data = _read_bounded(uri, limit, what="image") if uri else inline_image(session, image, limit)
    if hashlib.sha256(data).hexdigest() != image.result.get("sha256"):
        where = uri or "the XCom"
        raise ImageUnavailableError(
            409, f"the image at {where} has changed since this task ran (its sha256 differs)"
        )
    return data


def _read_bounded(uri: str, limit: int, *, what: str) -> bytes:
    from airflow_provider_mai.storage import open_location

    try:
        # open_location, as the operators wrote it: a local path stays literal ('?' and '#' included).
        with open_location(uri).open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ImageUnavailableError(404, f"the {what} is no longer at {uri}") from None
    except Exception as exc:
        # Store errors can be long and name internals: the log keeps them, the page says where.
        log.warning("Cannot read the MAI %s at %s: %s", what, uri, exc)
        raise ImageUnavailableError(
            502, f"cannot read the {what} at {uri} ({type(exc).__name__}; see the api-server log)"
        ) from None
    if len(data) > limit:
        raise ImageUnavailableError(413, f"the {what} at {uri} is larger than {limit} bytes")
    return data


class _SidecarCache:
    """Sidecars already read, by (sidecar location, image sha256): bounded, least recently used out."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


_sidecars = _SidecarCache()


def verified_sidecar(image: TaskImage) -> dict[str, Any] | None:
    """The image's provenance sidecar (the JSON beside its PNG), or None when it has none (an
    XCom-only image). Only a sidecar whose own ``sha256`` is the image's is returned.

    Not ``storage.read_sidecar`` (the operators' reuse check, for which any problem just means
    "no reusable image"): a page must say why there is no sidecar - gone, too large, unreadable,
    not JSON, or describing another image - as the HTTP status of :class:`ImageUnavailableError`.

    :raises ImageUnavailableError: 404 gone, 413 too large, 502 unreadable or not a JSON object,
        409 it does not describe this image (its content is not returned).
    """
    location = image.sidecar_uri
    if location is None:
        return None
    sha256 = str(image.result["sha256"])
    cached = _sidecars.get((location, sha256))
    if cached is not None:
        return cached
    raw = _read_bounded(location, MAX_SIDECAR_BYTES, what="sidecar")
    try:
        sidecar = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not JSON") from None
    if not isinstance(sidecar, dict):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not a JSON object")
    if sidecar.get("sha256") != sha256:
        raise ImageUnavailableError(
            409,
            f"the file at {location} does not describe this image (its sha256 is not the image's): not shown",
        )
    _sidecars.put((location, sha256), sidecar)
    return sidecar


def attach_sidecar(image: TaskImage) -> None:
    """Read the image's sidecar into ``sidecar``, or why it cannot be shown into ``sidecar_error``."""
    try:
        image.sidecar = verified_sidecar(image)
    except ImageUnavailableError as exc:
        image.sidecar_error = exc.message
