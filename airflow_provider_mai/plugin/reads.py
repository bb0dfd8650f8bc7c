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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.plugin.queries import inline_image
from airflow_provider_mai.plugin.trust import (
    MAX_IMAGE_BYTES,
    MAX_SIDECAR_BYTES,
    ImageUnavailableError,
    png_uri,
)
from airflow_provider_mai.storage import location_key

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_mai.plugin.views import TaskImage

log = logging.getLogger(__name__)


#: Whether the requesting user may read a DAG's XComs (asked of Airflow's auth manager).
DagReader = Callable[[str], bool]


def read_image(
    session: Session, image: TaskImage, may_read: DagReader, *, limit: int = MAX_IMAGE_BYTES
) -> bytes:
    """The PNG of an image, from its ``uri`` (through ObjectStoragePath) or from its XCom's
    ``b64_json``, checked against the result's sha256; a stored PNG only when its sidecar proves it
    may be shown (:func:`_read_sidecar`, :func:`_check_reader`).

    :param may_read: whether the user may read a DAG (the DAG of the task that wrote the PNG).
    :raises ImageUnavailableError: gone (404), too large (413), changed since the run (409),
        unreadable (502), no sidecar that proves it may be shown here (404, 409, 403).
    """
    uri = png_uri(image.uri)
    # An inline image is in the XCom of the very task the route authorised.
    data = _read_bounded(uri, limit, what="image") if uri else inline_image(session, image, limit)
    sha256 = str(image.result.get("sha256"))
    if hashlib.sha256(data).hexdigest() != sha256:
        where = uri or "the XCom"
        raise ImageUnavailableError(
            409, f"the image at {where} has changed since this task ran (its sha256 differs)"
        )
    if uri:
        # Only after this read: the cache holds sidecars that proved these bytes at this location.
        key = (location_key(uri), sha256)
        sidecar = _sidecars.get(key)
        if sidecar is None:
            sidecar = _read_sidecar(image, sha256)
            _sidecars.put(key, sidecar)
        _check_reader(sidecar, uri, may_read)
    return data


def _read_bounded(location: str, limit: int, *, what: str) -> bytes:
    from airflow_provider_mai.storage import open_location

    try:
        # open_location, as the operators wrote it: a local path stays literal ('?' and '#' included).
        with open_location(location).open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ImageUnavailableError(404, f"the {what} is no longer at {location}") from None
    except Exception as exc:
        # Store errors can be long and name internals: the log keeps them, the page says where.
        log.warning("Cannot read the MAI %s at %s: %s", what, location, exc)
        raise ImageUnavailableError(
            502, f"cannot read the {what} at {location} ({type(exc).__name__}; see the api-server log)"
        ) from None
    if len(data) > limit:
        raise ImageUnavailableError(413, f"the {what} at {location} is larger than {limit} bytes")
    return data


class _SidecarCache:
    """Verified sidecars, by (PNG location key, image sha256): bounded, least recently used out."""

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


def verified_sidecar(image: TaskImage, may_read: DagReader) -> dict[str, Any] | None:
    """The image's provenance sidecar (the JSON beside its PNG), or None when it has none (an
    XCom-only image). Read from storage on every call (never from the cache: nothing else was read
    for it), and returned only when it proves it may be shown (:func:`_read_sidecar`,
    :func:`_check_reader`).

    Not ``storage.read_sidecar`` (the operators' reuse check, for which any problem just means
    "no reusable image"): a page must say why there is no sidecar - gone, too large, unreadable,
    not JSON, or describing another image - as the HTTP status of :class:`ImageUnavailableError`.

    :raises ImageUnavailableError: 404 gone, 413 too large, 502 unreadable or not a JSON object,
        409 it does not describe this image at this location, 403 written by a task of a DAG the
        user may not read (its content is never returned).
    """
    uri = png_uri(image.uri)
    if uri is None:
        return None
    sidecar = _read_sidecar(image, str(image.result["sha256"]))
    _check_reader(sidecar, uri, may_read)
    return sidecar


def _read_sidecar(image: TaskImage, sha256: str) -> dict[str, Any]:
    """The sidecar beside the image's PNG, when it describes this image at this location: its
    ``sha256`` is the result's and its ``uri`` is (as :func:`location_key` spells it) the location
    read. Who may see it is :func:`_check_reader`'s question."""
    location = str(image.sidecar_uri)
    try:
        raw = _read_bounded(location, MAX_SIDECAR_BYTES, what="sidecar")
    except ImageUnavailableError as exc:
        if exc.status != 404:
            raise
        raise ImageUnavailableError(
            404,
            f"there is no sidecar at {location} (the JSON an operator writes beside its PNG, naming the "
            "task that wrote it): the image is not shown without it",
        ) from None
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
    recorded = png_uri(sidecar.get("uri"))
    if recorded is None or not isinstance(sidecar.get("dag_id"), str):
        raise ImageUnavailableError(
            409,
            f"the sidecar at {location} does not name the location and DAG it was written for (written "
            "by an older provider version, or not by an operator): the image is not shown",
        )
    if _key_or_none(recorded) != location_key(str(image.uri)):
        raise ImageUnavailableError(
            409, f"the sidecar at {location} was written for another location: the image is not shown"
        )
    return sidecar


def _key_or_none(uri: str) -> str | None:
    try:
        return location_key(uri)
    except Exception:  # a location no store can open (e.g. an unknown protocol) matches nothing
        return None


def _check_reader(sidecar: Mapping[str, Any], uri: str, may_read: DagReader) -> None:
    """Refuse an image whose sidecar names a DAG the user may not read: a result of any task can
    name any location, so the DAG of the task that wrote it decides (its ``dag_id``, checked by
    :func:`_read_sidecar`), not the DAG of the result."""
    if not may_read(str(sidecar["dag_id"])):
        raise ImageUnavailableError(
            403,
            f"the image at {uri} was written by a task of a DAG you may not read: it is not shown here",
        )


def attach_sidecar(image: TaskImage, may_read: DagReader) -> None:
    """Read the image's sidecar into ``sidecar``, or why it cannot be shown into ``sidecar_error``."""
    try:
        image.sidecar = verified_sidecar(image, may_read)
    except ImageUnavailableError as exc:
        image.sidecar_error = exc.message
