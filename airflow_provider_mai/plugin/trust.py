"""What a MAI result may show: the checks on untrusted XCom values, and the bounds of every read.

A task instance's image is found through its XCom ``return_value`` (a plain dict: ``uri``,
``b64_json``, ``sha256``, ``prompt``...). A task counts as a MAI task when it pushed the
``MaiImageLink`` extra link (every MAI operator does, at task end) or when its operator is one of
ours; a look-alike dict returned by any other task is not shown.

Any task can push that link and return any dict, so a result is untrusted input:

- its fields are coerced to the types the pages use (a field of another type is left out), and a
  result without a well-formed sha256 is not an image;
- only its ``uri`` is ever opened, and only when it names a ``.png`` (any case) off the web;
- the PNG is served only when its bytes hash to the XCom's sha256;
- the sidecar is read only from beside that PNG (``<name>.json``; the XCom's ``sidecar_uri`` is
  never used), and shown only when its own ``sha256`` is the XCom's;
- a stored PNG, its thumbnail and its sidecar are shown only when that sidecar (written by the
  operator: storage is trusted, XCom is not) records the location read and names the DAG of the
  task that wrote it, which the user may read (:mod:`.reads`) - a result in one DAG cannot show
  another DAG's image;
- nothing is read from a location a request names.

Pages read results without their inline image (the database leaves ``b64_json`` out), each within
a byte bound, and only for the images they show: a run of a thousand images kept in XCom costs a
page a few kilobytes per image shown, not gigabytes. The queries are in :mod:`.queries`, the
storage reads in :mod:`.reads`, the records the pages render in :mod:`.views`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_mai.links import MaiImageLink, is_sha256

#: XCom key of the "MAI image" extra link: pushed at the end of every MAI operator task instance.
LINK_XCOM_KEY = MaiImageLink().xcom_key
RETURN_XCOM_KEY = "return_value"
#: Task types (operator class names) of the provider's operators, for task instances that have no
#: link XCom (the task has not ended yet).
MAI_OPERATOR_NAMES = frozenset({"MaiGenerateImageOperator", "MaiEditImageOperator"})
#: Largest image the plugin reads into memory: MAI images are at most one megapixel, a PNG of at
#: most ~4 MB.
MAX_IMAGE_BYTES = 16 * 1024 * 1024
#: Largest sidecar the plugin reads (ours are ~1 KB plus the prompt).
MAX_SIDECAR_BYTES = 256 * 1024
#: Largest result (without its inline image) a page that lists images reads: the fields shown are
#: ~1 KB plus the prompt. A page holds at most (images it shows) x this; a larger result is listed
#: as too large to show, with a link to its own tab.
MAX_LISTED_RESULT_BYTES = 32 * 1024
#: Largest result (without its inline image) read for one task instance's own tab and routes: the
#: service's longest prompt fits.
MAX_RESULT_BYTES = 1024 * 1024
#: Result keys per query (older SQLite builds allow 999 parameters in a statement).
KEYS_PER_QUERY = 250


class ImageUnavailableError(Exception):
    """The image of a result cannot be served; ``status`` is the HTTP answer that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: Result fields the pages show, by the type each must have.
_TEXT_FIELDS = ("prompt", "operation", "model", "deployment", "request_id", "source_image", "created_utc")
_COUNT_FIELDS = ("width", "height", "size_bytes")
#: The schemes operators write outputs to: local files and ObjectStoragePath's object stores.
WRITTEN_SCHEMES = frozenset(
    {"file", "local", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "wasb", "wasbs"}
)
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):")


def png_uri(value: Any) -> str | None:
    """``value`` when it may be opened as a MAI image: a location whose name ends in ``.png`` (any
    case), not on the web (operators never write there; reading it would make the api-server fetch
    whatever URL a task named). None otherwise."""
    if not isinstance(value, str) or len(value) <= len(".png"):
        return None
    # Decided on the normalised spelling: a location with surrounding spaces or control characters
    # is not one an operator writes (" http://x.png" still reads as http through ObjectStoragePath).
    if value != value.strip() or any(ord(char) < 32 or ord(char) == 127 for char in value):
        return None
    lowered = value.lower()
    if not lowered.endswith(".png"):
        return None
    scheme = _SCHEME.match(lowered)
    if scheme is not None and scheme.group(1) not in WRITTEN_SCHEMES:
        return None  # the web (http, https, ftp...) and any scheme we never write to
    return value


def shown_fields(source: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a result or sidecar the pages show, each of the type they expect (text, a
    positive whole number, ``reused`` true); a field of any other type is left out."""
    fields: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if isinstance(source.get(name), str):
            fields[name] = source[name]
    for name in _COUNT_FIELDS:
        number = source.get(name)
        if isinstance(number, int) and not isinstance(number, bool) and number > 0:
            fields[name] = number
    if source.get("reused") is True:
        fields["reused"] = True
    disclosure = source.get("disclosure")
    if isinstance(disclosure, str) and disclosure:
        fields["disclosure"] = disclosure
    return fields


def mai_result(value: Any, *, inline: bool | None = None) -> dict[str, Any] | None:
    """A MAI result's fields as the plugin uses them (see :func:`shown_fields`), with ``sha256``,
    ``uri`` (a PNG's, or None) and ``inline`` (whether the image travels in XCom); None when
    ``value`` is not a MAI result: a sha256 of 64 hex digits, and a PNG's ``uri`` or an inline image.

    :param inline: whether the result has an inline image, when ``value`` was read without it.
    """
    if not isinstance(value, Mapping) or not is_sha256(value.get("sha256")):
        return None
    if inline is None:
        encoded = value.get("b64_json")
        inline = isinstance(encoded, str) and bool(encoded)
    uri = value.get("uri")
    if uri not in (None, "") and png_uri(uri) is None:
        return None  # it names something that is not a PNG: never opened, never shown
    if not uri and not inline:
        return None
    return {**shown_fields(value), "sha256": value["sha256"], "uri": uri or None, "inline": not uri}
