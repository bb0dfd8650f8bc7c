"""Results written through Airflow's ``ObjectStoragePath``: naming, reuse, atomic writes, sidecars.

Every scheme Airflow's object storage knows works (``file://``, ``s3://``, ``abfs://``, ``gs://``,
plain local paths). A plain local path is a path: ``?`` and ``#`` in it are characters of a name,
never a URL's query or fragment. Edit inputs are read in :mod:`airflow_provider_mai.inputs`.

Writes are atomic from a reader's view: a local file is written to a temporary name and renamed
(or hard-linked, for an exclusive create); an object store receives a single put. The PNG goes first
and the provenance sidecar second, so a sidecar always describes a complete image.

Buckets and containers are never created. Folders inside them need no creating (a put names the
whole key), and fsspec's ``mkdir`` on S3, Azure Blob or GCS would create the bucket or container
itself when it is missing. :func:`check_output` asks the store whether it exists before any
request is sent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.exceptions import MaiConfigurationError, MaiError, MaiOutputExistsError
from airflow_provider_mai.validation import check_png_name

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mai.models import ImageRecord, ImageRequest

SIDECAR_SUFFIX = ".json"
#: Names the operator makes stay under this many bytes, leaving room for the temporary suffixes
#: (``.<name>.<12 hex>.tmp``) within the 255 bytes most file systems allow.
MAX_FILE_NAME_BYTES = 200
#: Object stores whose fsspec file system refuses a put over an existing object (``mode="create"``).
_EXCLUSIVE_PUT_PROTOCOLS = frozenset({"s3", "s3a", "abfs", "abfss", "az"})
#: Object stores whose first path part is a bucket or container, which the provider never creates.
_BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "oss"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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


def check_output(path: ObjectStoragePath) -> None:
    """Fail early (before any quota is spent) when ``path`` cannot receive an image.

    The name must end in ``.png`` (the service always answers PNG; and a ``.json`` name would be
    its own sidecar) and fit the file system. A local location is probed for real: the folder is
    created and a probe file written and removed - permission bits cannot tell (root ignores them;
    read-only mounts and virtual file systems do not show in them); a dangling symbolic link there
    is refused, naming where it points. On an object store the bucket or container must exist
    (:func:`check_bucket`); writing itself is checked by the write (probing would cost a request
    and a delete permission).
    """
    check_png_name(path.name, str(path))
    if not is_local(path):
        if path.protocol in _BUCKET_PROTOCOLS:
            check_bucket(path)
        return
    target = Path(path.path)
    if target.is_dir():
        raise MaiConfigurationError(
            f"output_path {path} is an existing folder: end it with '/' to let the operator name the file"
        )
    _refuse_dangling_link(target, path)
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        _refuse_dangling_link(ancestor, path)
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


def _refuse_dangling_link(local: Path, path: ObjectStoragePath) -> None:
    """A symbolic link at ``local`` that leads nowhere would be replaced (or, for an exclusive
    write, refused after the request was paid for): say what is there, before sending."""
    if not local.is_symlink() or local.exists():
        return
    try:
        points_to = os.readlink(local)
    except OSError:
        points_to = "?"
    where = "output_path" if str(local) == path.path else f"{local}, on the way to output_path {path},"
    raise MaiConfigurationError(
        f"{where} is a symbolic link to {points_to[:300]!r}, which does not exist (a missing mount or "
        "a removed file?): remove the link or point it at a real location; nothing was sent"
    )


def check_bucket(path: ObjectStoragePath) -> None:
    """Refuse ``path`` on an object store when its bucket or container does not exist.

    The provider never creates one: on real AWS that is a stray bucket (or an AccessDenied after
    the image was paid for). S3 is asked with HeadBucket: "not found" is refused, "access denied"
    is let through (a role may write keys without the right to look at the bucket; the put will
    tell). Azure Blob and others are asked through fsspec's ``exists`` (adlfs counts a container it
    may not look at as existing). A store that cannot be reached is an error too, before sending.
    """
    protocol = path.protocol
    kind = "container" if protocol in ("abfs", "abfss", "az") else "bucket"
    bucket = path.path.split("/", 1)[0]
    if not bucket:
        raise MaiConfigurationError(f"output_path {path} names no {kind}")
    try:
        if protocol in ("s3", "s3a"):
            try:
                path.fs.call_s3("head_bucket", Bucket=bucket)
                found = True
            except FileNotFoundError:
                found = False
            except PermissionError:
                return  # may not look: the put itself will say whether it may write
        else:
            path.fs.invalidate_cache(bucket)
            found = bool(path.fs.exists(bucket))
    except Exception as exc:  # the store's own text may quote a signed URL or a key: name the class
        said = (
            f"could not check that the {kind} {bucket!r} of output_path {path} exists ({type(exc).__name__})"
        )
        if getattr(path, "conn_id", None):  # perhaps a passing network failure: task retries may help
            raise MaiError(f"{said}; nothing was sent") from None
        # Most likely the path itself: without a connection the store's library uses its own
        # credentials and endpoint (for s3://, boto3's; ~10 s of retries when there are none).
        raise MaiConfigurationError(
            f"{said}; nothing was sent. The path names no Airflow connection: write "
            f"{protocol}://<conn_id>@{bucket}/... so that the connection's endpoint and credentials are used"
        ) from None
    if not found:
        raise MaiConfigurationError(
            f"the {kind} {bucket!r} of output_path {path} does not exist: the provider never creates "
            f"buckets or containers. Create it (or correct the name) and run the task again; nothing "
            "was sent"
        )


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
    # A bucket store needs no folders (and its mkdir would create a missing bucket or container).
    if path.protocol not in _BUCKET_PROTOCOLS:
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


#: The in-flight marker of a PNG: hidden, and ending in neither ``.png`` nor ``.json``, so no
#: listing of images or sidecars (a ``*.png`` glob, reuse, the gallery) ever takes it for one.
INFLIGHT_SUFFIX = ".inflight"
#: A marker is a few hundred bytes; anything longer is not one of ours.
_MAX_MARKER_BYTES = 64 * 1024


def inflight_path(png_path: ObjectStoragePath) -> ObjectStoragePath:
    """Where the in-flight marker of the request writing ``png_path`` lives: ``.<name>.inflight``."""
    return png_path.parent / f".{png_path.name}{INFLIGHT_SUFFIX}"


def write_inflight(png_path: ObjectStoragePath, marker: dict[str, Any]) -> None:
    """Write (or replace) the in-flight marker of ``png_path``: small JSON, complete or absent
    (a local temporary file renamed; one put on an object store)."""
    try:
        _write(inflight_path(png_path), json.dumps(marker, sort_keys=True).encode())
    except PermissionError as exc:
        raise MaiConfigurationError(f"cannot write beside {png_path}: permission denied") from exc
    except OSError as exc:
        raise MaiConfigurationError(f"cannot write beside {png_path}: {exc.strerror or exc}") from exc


def read_inflight(png_path: ObjectStoragePath) -> dict[str, Any] | None:
    """The in-flight marker of ``png_path``, or None when there is none (or it is not one of ours:
    unreadable, too long, not a JSON object - a leftover to be replaced, never trusted)."""
    try:
        with inflight_path(png_path).open("rb") as handle:
            data = handle.read(_MAX_MARKER_BYTES + 1)
        if len(data) > _MAX_MARKER_BYTES:
            return None
        marker = json.loads(data)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def remove_inflight(png_path: ObjectStoragePath) -> None:
    """Remove the in-flight marker of ``png_path`` (none there is fine)."""
    with contextlib.suppress(FileNotFoundError):
        inflight_path(png_path).unlink()  # one DELETE on an object store


def store_image(
    path: ObjectStoragePath,
    image: Any,
    request: ImageRequest,
    *,
    endpoint: str,
    exclusive: bool = False,
    log: Any = None,
) -> ImageRecord:
    """The one writing path of both modes: the record of ``image`` located at ``path``, its PNG
    and sidecar written (:func:`write_image`), the write reported to ``log``."""
    from airflow_provider_mai.models import ImageRecord

    record = ImageRecord.from_image(image, request, endpoint=endpoint).replace(
        uri=str(path), sidecar_uri=str(sidecar_path(path))
    )
    write_image(path, image.png, record, exclusive=exclusive)
    if log is not None:
        log.info(
            "Wrote %dx%d PNG (%d bytes, request id %s, %d attempt(s)) to %s",
            image.width,
            image.height,
            image.size_bytes,
            image.request_id,
            image.attempts,
            path,
        )
    return record
