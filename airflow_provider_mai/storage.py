"""Edit inputs read and results written through Airflow's ``ObjectStoragePath``.

Every scheme Airflow's object storage knows works (``file://``, ``s3://``, ``abfs://``, ``gs://``,
plain local paths). A plain local path is a path: ``?`` and ``#`` in it are characters of a name,
never a URL's query or fragment.

Writes are atomic from a reader's view: a local file is written to a temporary name and renamed
(or hard-linked, for an exclusive create); an object store receives a single put. The PNG goes first
and the provenance sidecar second, so a sidecar always describes a complete image.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

from airflow_provider_mai.exceptions import MaiConfigurationError, MaiOutputExistsError, MaiValidationError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mai.models import ImageRecord, ImageRequest

#: What an edit accepts as its input image.
ImageSource = Union[bytes, bytearray, str, "os.PathLike[str]", "ObjectStoragePath", Mapping[str, Any]]

SIDECAR_SUFFIX = ".json"
IF_EXISTS_CHOICES = ("overwrite", "skip", "fail")
#: How an operator names its PNG in a folder: per run (each run its own image), or per request
#: (the same request always lands at the same path, so ``if_exists="skip"`` reuses it anywhere).
NAMING_CHOICES = ("run", "request")
#: Names the operator makes stay under this many bytes, leaving room for the temporary suffixes
#: (``.<name>.<12 hex>.tmp``) within the 255 bytes most file systems allow.
MAX_FILE_NAME_BYTES = 200
_NAME_LIMIT = 255 - len("..0123456789ab.probe")
#: Object stores whose fsspec file system refuses a put over an existing object (``mode="create"``).
_EXCLUSIVE_PUT_PROTOCOLS = frozenset({"s3", "s3a", "abfs", "abfss", "az"})
_HTTP_PROTOCOLS = frozenset({"http", "https"})
#: Seconds to read an opted-in web URL given as edit input.
WEB_INPUT_TIMEOUT = 60.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LoadedImage:
    """Image bytes read from a source, and where they came from (None for inline bytes)."""

    data: bytes
    location: str | None


def _local(path_text: str) -> ObjectStoragePath:
    """A local path as an ObjectStoragePath, literally: built from its parts, never parsed as a URL."""
    from airflow.sdk import ObjectStoragePath

    absolute = Path(os.path.abspath(os.path.expanduser(path_text)))
    return ObjectStoragePath("/", protocol="file").joinpath(*absolute.parts[1:])


def open_location(location: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    """An ObjectStoragePath for a local path, a ``file://`` URI (kept literal too), or any fsspec URI."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    text = os.fspath(location) if isinstance(location, os.PathLike) else str(location)
    if text.startswith("file://"):
        return _local(text[len("file://") :] or "/")
    if "://" not in text:
        return _local(text)
    return ObjectStoragePath(text)


def is_local(path: ObjectStoragePath) -> bool:
    """Whether ``path`` is on this machine's file system."""
    return path.protocol in ("file", "local", "")


def read_image_source(source: ImageSource, *, max_bytes: int, allow_http: bool = False) -> LoadedImage:
    """Load edit input from bytes, a path, an fsspec URI, an ObjectStoragePath, or an upstream MAI
    result (``uri`` or ``b64_json``), reading at most ``max_bytes`` (+1, to notice more).

    :param allow_http: read ``http(s)://`` URLs. Off by default: a template rendering a URL from
        upstream data would otherwise make the worker fetch any address.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return LoadedImage(_bounded(bytes(source), max_bytes, "edit input"), None)
    if isinstance(source, Mapping):
        if source.get("uri"):
            return read_image_source(str(source["uri"]), max_bytes=max_bytes, allow_http=allow_http)
        encoded = source.get("b64_json")
        if encoded:
            if not isinstance(encoded, str) or len(encoded) > (max_bytes + 3) // 3 * 4 + 4:
                raise _too_large("the upstream result's b64_json", max_bytes)
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
            raise _web_refused(source)
        return LoadedImage(_fetch_web_input(source, max_bytes), public_url(source))
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
            raise _web_refused(str(path))
        return LoadedImage(_fetch_web_input(str(path), max_bytes), public_url(str(path)))
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise MaiValidationError(f"edit input not found: {path}") from None
    except IsADirectoryError:
        raise MaiValidationError(f"edit input is a folder, not an image: {path}") from None
    return LoadedImage(_bounded(data, max_bytes, f"edit input {path}"), str(path))


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


def _web_refused(url: str) -> MaiValidationError:
    url = public_url(url)
    return MaiValidationError(
        f"edit input {url!r} is a web URL: reading URLs is off, so a template cannot make the "
        "worker fetch any address. Copy the image to object storage, or let the connection's owner "
        "set the extra allow_http_inputs=true."
    )


def _fetch_web_input(url: str, max_bytes: int) -> bytes:
    """GET an opted-in web URL with the provider's bounds: a deadline, the size cap, no redirects."""
    from airflow_provider_mai import __version__
    from airflow_provider_mai.transport import TransportError, exchange, new_session

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
            raise _too_large(f"edit input {shown}", max_bytes) from None
        raise MaiValidationError(f"edit input {shown!r} could not be read: {exc.reason}") from None
    finally:
        session.close()
    if answer.status != 200:
        raise MaiValidationError(f"edit input {shown!r} answered {answer.status}, not an image")
    return bytes(answer.take_body())


def _too_large(what: str, max_bytes: int) -> MaiValidationError:
    return MaiValidationError(
        f"{what} is larger than {max_bytes / 1048576:g} MB, the connection's max_input_mb: "
        "use a smaller image (the service scales edits to about one megapixel anyway)"
    )


def _bounded(data: bytes, max_bytes: int, what: str) -> bytes:
    if len(data) > max_bytes:
        raise _too_large(what, max_bytes)
    return data


def safe_name_part(text: str) -> str:
    """A file-name-safe rendering of a DAG id, run id or task id (run ids hold ':' and '+')."""
    return _UNSAFE.sub("_", text).strip("._") or "x"


def short_name(stem: str, suffix: str = ".png") -> str:
    """``stem + suffix``, shortened deterministically when too long: a readable prefix and a hash."""
    if len((stem + suffix).encode()) <= MAX_FILE_NAME_BYTES:
        return stem + suffix
    digest = hashlib.sha256(stem.encode()).hexdigest()[:16]
    keep = MAX_FILE_NAME_BYTES - len(suffix) - len(digest) - 2
    return f"{stem.encode()[:keep].decode('ascii', 'ignore')}__{digest}{suffix}"


def default_file_name(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """The name an operator gives its PNG in a folder: unique per DAG, run, task and map index."""
    parts = [safe_name_part(dag_id), safe_name_part(run_id), safe_name_part(task_id)]
    if map_index is not None and map_index >= 0:
        parts.append(str(map_index))
    return short_name("__".join(parts))


def request_file_name(request: ImageRequest) -> str:
    """The name of a request's PNG: the same for the same request in any run, DAG or day.

    A readable prefix (operation, deployment, the prompt's start) and the request fingerprint,
    which covers everything asked (prompt, deployment, size, extra params, an edit input's sha256).
    """
    prompt = safe_name_part(request.prompt)[:60].strip("._") or "image"
    return short_name(
        f"{request.operation}__{safe_name_part(request.deployment)}__{prompt}__{request.fingerprint[:20]}"
    )


def resolve_output_path(
    output_path: str | os.PathLike[str] | ObjectStoragePath, file_name: str
) -> ObjectStoragePath:
    """The PNG's final location: ``output_path`` itself, or ``file_name`` inside it when it is a
    folder (a string ending in ``/``, or an ObjectStoragePath to an existing folder)."""
    path = open_location(output_path)
    if isinstance(output_path, (str, os.PathLike)):
        is_folder = os.fspath(output_path).endswith(("/", os.sep))
    else:
        is_folder = path.is_dir()
    return path / file_name if is_folder else path


def sidecar_path(png_path: ObjectStoragePath) -> ObjectStoragePath:
    """Where the provenance JSON of a PNG lives: beside it, ``<name>.json``."""
    return png_path.parent / (png_path.stem + SIDECAR_SUFFIX)


def check_png_name(name: str, shown: str) -> None:
    """The file name of an output must end in ``.png`` and fit a file system's 255 bytes."""
    if not name.lower().endswith(".png"):
        raise MaiConfigurationError(
            f"output_path {shown} must name a .png file (or end with '/' to name a folder): the "
            "service always answers PNG, and the provenance sidecar takes the .json name beside it"
        )
    if len(name.encode()) > _NAME_LIMIT:
        raise MaiConfigurationError(
            f"output_path's file name is {len(name.encode())} bytes long; at most {_NAME_LIMIT} fit"
        )


def check_output(path: ObjectStoragePath) -> None:
    """Fail early (before any quota is spent) when ``path`` cannot receive an image.

    The name must end in ``.png`` (the service always answers PNG; and a ``.json`` name would be
    its own sidecar) and fit the file system. A local location is probed for real: the folder is
    created and a probe file written and removed - permission bits cannot tell (root ignores them;
    read-only mounts and virtual file systems do not show in them). Object stores are checked by
    the write itself: probing them would cost a request and a delete permission.
    """
    check_png_name(path.name, str(path))
    if not is_local(path):
        return
    target = Path(path.path)
    if target.is_dir():
        raise MaiConfigurationError(
            f"output_path {path} is an existing folder: end it with '/' to let the operator name the file"
        )
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MaiConfigurationError(f"cannot write to {path}: {ancestor} is a file, not a folder")
    probe = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.probe")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except PermissionError:
        raise MaiConfigurationError(f"cannot write to {path}: no write permission on {ancestor}") from None
    except OSError as exc:
        raise MaiConfigurationError(f"cannot write to {path}: {exc.strerror or exc}") from None


def read_sidecar(png_path: ObjectStoragePath) -> dict[str, Any] | None:
    """The sidecar of an existing PNG, or None when either is missing or unreadable."""
    try:
        if not png_path.exists():
            return None
        with sidecar_path(png_path).open("rb") as handle:
            meta = json.loads(handle.read(1 << 20))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _sha256_of(path: ObjectStoragePath, max_bytes: int) -> str | None:
    """The sha256 of the file at ``path``, read in steps; None when it is larger than ``max_bytes``."""
    digest = hashlib.sha256()
    read = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            read += len(chunk)
            if read > max_bytes:
                return None
            digest.update(chunk)
    return digest.hexdigest()


def find_reusable(
    png_path: ObjectStoragePath, fingerprint: str, *, endpoint: str, max_bytes: int
) -> tuple[ImageRecord | None, str]:
    """The record of an earlier image at ``png_path`` that answers the request ``fingerprint`` from
    the same ``endpoint``, and is intact (its bytes, at most ``max_bytes``, match the sidecar's
    sha256); else None and why not."""
    sidecar = read_sidecar(png_path)
    if sidecar is None:
        return None, "nothing reusable there"
    if sidecar.get("request_fingerprint") != fingerprint:
        return None, "it holds an image of another request"
    made_by = sidecar.get("endpoint")
    if made_by is not None and made_by != endpoint:
        # The same deployment name on the emulator and on a real resource is not the same request.
        return None, f"its image was made by another endpoint ({str(made_by)[:100]})"
    if _sha256_of(png_path, max_bytes) != sidecar.get("sha256"):
        return None, "the image does not match its sidecar's checksum"
    from airflow_provider_mai.models import ImageRecord

    # Nothing is sent for a reused image: this task's attempts are 0 (the sidecar keeps the original's).
    record = ImageRecord.from_sidecar(
        sidecar, uri=str(png_path), sidecar_uri=str(sidecar_path(png_path)), reused=True, attempts=0
    )
    return record, "it holds this request's image"


#: Why ``os.link`` fails on file systems without hard links (FUSE mounts, SMB, exFAT...).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


def _write_local(target: Path, data: bytes, *, exclusive: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)  # atomic, and refuses an existing name: first writer wins
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # No hard links here: checked, then renamed - exclusive but for a moment's race.
            if target.exists():
                raise FileExistsError(str(target)) from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: ObjectStoragePath, data: bytes, *, exclusive: bool = False) -> None:
    if is_local(path):
        _write_local(Path(path.path), data, exclusive=exclusive)
        return
    # Object stores publish an object only when its single put completes: never half an object.
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.protocol in _EXCLUSIVE_PUT_PROTOCOLS:
        try:
            path.fs.pipe_file(path.path, data, mode="create")  # a conditional put (If-None-Match: *)
            return
        except FileExistsError:
            raise
        except Exception:
            pass  # fall back to the check below; the put itself reports real storage failures
    if exclusive and path.exists():
        raise FileExistsError(str(path))  # stores without conditional puts: checked, not atomic
    path.write_bytes(data)


def write_image(path: ObjectStoragePath, png: bytes, record: ImageRecord, *, exclusive: bool = False) -> None:
    """Write the PNG, then its sidecar; each is complete or absent at its final name.

    :param exclusive: refuse to replace an existing PNG (``if_exists="fail"``), atomically where the
        store allows it (local files, S3, Azure Blob).
    """
    try:
        _write(path, png, exclusive=exclusive)
        _write(sidecar_path(path), json.dumps(record.to_sidecar(), indent=2, sort_keys=True).encode())
    except FileExistsError:
        raise MaiOutputExistsError(
            f"{path} was written by another task while this one ran, and if_exists='fail': the "
            "image this task made was not kept"
        ) from None
    except PermissionError as exc:
        raise MaiConfigurationError(f"cannot write the image to {path}: permission denied") from exc
    except OSError as exc:
        raise MaiConfigurationError(f"cannot write the image to {path}: {exc.strerror or exc}") from exc
