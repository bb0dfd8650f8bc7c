"""Reading edit inputs and writing results through Airflow's ``ObjectStoragePath``.

Every scheme Airflow's object storage knows works (``file://``, ``s3://``, ``abfs://``, ``gs://``,
plain local paths). Writes are atomic from a reader's view: a local file is written to a temporary
name and renamed; an object store receives a single put. The PNG goes first and the provenance
sidecar second, so a sidecar always describes a complete image.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from airflow_provider_mai.exceptions import MaiConfigurationError, MaiValidationError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mai.hooks.mai import MaiImage

#: What an edit accepts as its input image.
ImageSource = Union[bytes, bytearray, str, "os.PathLike[str]", "ObjectStoragePath", Mapping[str, Any]]

AI_DISCLOSURE = (
    "This image was generated or edited by an AI model (Microsoft Foundry MAI) and should be "
    "disclosed as AI-generated where it is published."
)
SIDECAR_SUFFIX = ".json"
IF_EXISTS_CHOICES = ("overwrite", "skip", "fail")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class LoadedImage:
    """Image bytes read from a source, and where they came from (None for inline bytes)."""

    data: bytes
    location: str | None


def _open_path(location: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    text = str(location) if not isinstance(location, (str, os.PathLike)) else os.fspath(location)
    if "://" not in text:
        # A plain local path: make it absolute so the stored location means the same everywhere.
        text = "file://" + str(Path(text).expanduser().resolve())
    return ObjectStoragePath(text)


def read_image_source(source: ImageSource) -> LoadedImage:
    """Load edit input from bytes, a local path, an fsspec URI, an ObjectStoragePath, or an
    upstream MAI result dict (``uri`` or ``b64_json``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return LoadedImage(bytes(source), None)
    if isinstance(source, Mapping):
        if source.get("uri"):
            return read_image_source(str(source["uri"]))
        if source.get("b64_json"):
            try:
                return LoadedImage(base64.b64decode(source["b64_json"], validate=True), None)
            except (binascii.Error, ValueError, TypeError):
                raise MaiValidationError("the upstream result's b64_json is not valid base64") from None
        raise MaiValidationError(
            "the upstream result has neither 'uri' nor 'b64_json': pass a MAI operator's output, "
            "a path, a URI or image bytes"
        )
    if isinstance(source, str) and not source.strip():
        raise MaiValidationError("edit input path is empty")
    if isinstance(source, (str, os.PathLike)):
        path = _open_path(source)
    elif hasattr(source, "read_bytes") and hasattr(source, "protocol"):  # ObjectStoragePath / UPath
        path = source
    else:
        raise MaiValidationError(
            f"edit input must be bytes, a path, a URI, an ObjectStoragePath or a MAI result; "
            f"got {type(source).__name__}"
        )
    try:
        return LoadedImage(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise MaiValidationError(f"edit input not found: {path}") from None
    except IsADirectoryError:
        raise MaiValidationError(f"edit input is a folder, not an image: {path}") from None


def safe_name_part(text: str) -> str:
    """A file-name-safe rendering of a DAG id, run id or task id (run ids hold ':' and '+')."""
    return _UNSAFE.sub("_", text).strip("._") or "x"


def default_file_name(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """The name an operator gives its PNG in a folder: unique per DAG, run, task and map index."""
    parts = [safe_name_part(dag_id), safe_name_part(run_id), safe_name_part(task_id)]
    if map_index is not None and map_index >= 0:
        parts.append(str(map_index))
    return "__".join(parts) + ".png"


def resolve_output_path(
    output_path: str | os.PathLike[str] | ObjectStoragePath, file_name: str
) -> ObjectStoragePath:
    """The PNG's final location: ``output_path`` itself, or ``file_name`` inside it when it is a
    folder (a string ending in ``/``, or an ObjectStoragePath to an existing folder)."""
    path = _open_path(output_path)
    if isinstance(output_path, (str, os.PathLike)):
        is_folder = os.fspath(output_path).endswith(("/", os.sep))
    else:
        is_folder = path.is_dir()
    return path / file_name if is_folder else path


def sidecar_path(png_path: ObjectStoragePath) -> ObjectStoragePath:
    """Where the provenance JSON of a PNG lives: beside it, ``<name>.json``."""
    return png_path.parent / (png_path.stem + SIDECAR_SUFFIX)


def request_fingerprint(**request: Any) -> str:
    """A stable digest of what was asked (operation, deployment, prompt, size, input...).

    ``if_exists="skip"`` compares it with the sidecar's, so a rerun asking for the same image is free.
    """
    import hashlib

    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_sidecar(png_path: ObjectStoragePath) -> dict[str, Any] | None:
    """The sidecar of an existing PNG, or None when either is missing or unreadable."""
    side = sidecar_path(png_path)
    try:
        if not png_path.exists():
            return None
        meta = json.loads(side.read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_local(path: ObjectStoragePath) -> bool:
    return path.protocol in ("file", "local", "")


def check_writable(path: ObjectStoragePath) -> None:
    """Fail early (before any quota is spent) when a local output location cannot be written.

    The folder is created and a probe file written and removed: permission bits cannot tell
    (root ignores them; read-only mounts and virtual file systems do not show in them).
    Object stores are checked by the write itself: probing them would cost a request and a
    delete permission the user may not have granted.
    """
    if not _is_local(path):
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
    probe = target.with_name(f".{target.name}.{uuid.uuid4().hex}.probe")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except PermissionError:
        raise MaiConfigurationError(f"cannot write to {path}: no write permission on {ancestor}") from None
    except OSError as exc:
        raise MaiConfigurationError(f"cannot write to {path}: {exc.strerror or exc}") from None


def _atomic_write(path: ObjectStoragePath, data: bytes) -> None:
    if _is_local(path):
        local = Path(path.path)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return
    # Object stores publish an object only when its single PUT completes: never half an object.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_sidecar(image: MaiImage, *, operation: str, fingerprint: str, source: str | None) -> dict[str, Any]:
    """Provenance of a written image: what was asked, what came back, and the AI disclosure."""
    return {
        "operation": operation,
        "prompt": image.prompt,
        "deployment": image.deployment,
        "model": image.model,
        "width": image.width,
        "height": image.height,
        "sha256": image.sha256,
        "size_bytes": image.size_bytes,
        "request_id": image.request_id,
        "usage": dict(image.usage) if image.usage else None,
        "source_image": source,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request_fingerprint": fingerprint,
        "ai_generated": True,
        "disclosure": AI_DISCLOSURE,
        "generator": "airflow-provider-mai",
    }


def write_image(path: ObjectStoragePath, image: MaiImage, sidecar: Mapping[str, Any]) -> None:
    """Write the PNG, then its sidecar; each is complete or absent at its final name."""
    try:
        _atomic_write(path, image.png)
        _atomic_write(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True).encode())
    except PermissionError as exc:
        raise MaiConfigurationError(f"cannot write the image to {path}: permission denied") from exc
    except OSError as exc:
        raise MaiConfigurationError(f"cannot write the image to {path}: {exc.strerror or exc}") from exc
