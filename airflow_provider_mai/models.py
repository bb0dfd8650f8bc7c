"""The provider's data: what is asked of the service, what comes back, and the record of a result.

- :class:`GenerateRequest` and :class:`EditRequest` are validated when they are built, once, wherever
  a value enters (an operator, or a direct hook call); everything downstream trusts them.
- :class:`MaiImage` is one image as the service returned it.
- :class:`ImageRecord` is the result of one task: its fields are listed here once, and the XCom
  ``return_value``, the sidecar JSON beside a written PNG and the OpenLineage run facet all derive
  from them.

Standard library only (and the provider's own validation rules), so it is cheap to import.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, ClassVar

from airflow_provider_mai.api import EDIT_OWN_FIELDS, GENERATE_OWN_FIELDS
from airflow_provider_mai.validation import (
    validate_edit_image,
    validate_extra_params,
    validate_prompt,
    validate_size,
)

AI_DISCLOSURE = (
    "This image was generated or edited by an AI model (Microsoft Foundry MAI) and should be "
    "disclosed as AI-generated where it is published."
)
GENERATOR = "airflow-provider-mai"


class _Request:
    """What both requests share: their fingerprint, over everything that shapes the image."""

    operation: ClassVar[str]
    deployment: str
    prompt: str
    extra_params: Mapping[str, Any]

    def _subject(self) -> dict[str, Any]:
        """The request's own part of the fingerprint (the size, or the input image)."""
        raise NotImplementedError

    @cached_property
    def fingerprint(self) -> str:
        """A stable digest of what is asked: the same request always gives the same digest.

        ``if_exists="skip"`` compares it with a sidecar's; ``naming="request"`` names files by it.
        """
        asked = {"operation": self.operation, "deployment": self.deployment, "prompt": self.prompt}
        canonical = json.dumps(
            {**asked, **self._subject(), "extra_params": dict(self.extra_params)},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class GenerateRequest(_Request):
    """A text-to-image request, checked against the documented rules when it is built.

    :param prompt: what to draw (non-empty, within the documented length).
    :param width: pixels; each side >= 768 and width x height <= 1,048,576. Text such as ``"1024"``
        (a rendered template) is accepted and turned into an int.
    :param height: pixels, as ``width``.
    :param deployment: the deployment name sent as ``model``.
    :param extra_params: more JSON fields for newer models; cannot set ``model``, ``prompt``,
        ``width`` or ``height``.
    """

    operation: ClassVar[str] = "generate"
    reserved: ClassVar[frozenset[str]] = GENERATE_OWN_FIELDS

    prompt: str
    width: int
    height: int
    deployment: str
    extra_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        width, height = validate_size(self.width, self.height)
        object.__setattr__(self, "prompt", validate_prompt(self.prompt))
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "extra_params", validate_extra_params(self.extra_params, self.reserved))

    def _subject(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height}


@dataclass(frozen=True)
class EditRequest(_Request):
    """An image-edit request, checked when it is built: the input must be a real PNG or JPEG.

    :param image: the input image's bytes (judged by its bytes, never a name).
    :param prompt: the edit to make.
    :param deployment: the deployment name sent as ``model``.
    :param extra_params: more form fields for newer models; ``width``/``height`` here follow the
        size rule; cannot set ``model``, ``prompt`` or ``image``.
    :param source: where the input was read from (a URI), or None for inline bytes.
    """

    operation: ClassVar[str] = "edit"
    reserved: ClassVar[frozenset[str]] = EDIT_OWN_FIELDS

    image: bytes = field(repr=False)
    prompt: str
    deployment: str
    extra_params: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    mime_type: str = field(init=False)
    image_sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mime_type", validate_edit_image(self.image))
        object.__setattr__(self, "image", bytes(self.image))
        object.__setattr__(self, "image_sha256", hashlib.sha256(self.image).hexdigest())
        object.__setattr__(self, "prompt", validate_prompt(self.prompt))
        extras = validate_extra_params(self.extra_params, self.reserved)
        if "width" in extras or "height" in extras:
            extras["width"], extras["height"] = validate_size(extras.get("width"), extras.get("height"))
        object.__setattr__(self, "extra_params", extras)

    def _subject(self) -> dict[str, Any]:
        return {"image_sha256": self.image_sha256}


ImageRequest = GenerateRequest | EditRequest


@dataclass(frozen=True)
class MaiImage:
    """One image returned by the service. Immutable.

    :param png: the PNG bytes.
    :param width: width in pixels, read from the PNG (the service may snap sizes to 16).
    :param height: height in pixels, read from the PNG.
    :param model: the model the service reports (its ``model`` field), else the deployment name.
    :param prompt: the prompt sent.
    :param deployment: the deployment name the request named.
    :param request_id: the service's request id, when a response header carried one.
    :param usage: the service's token counts, when the body carried them.
    :param response: every other top-level field of the success body (kept, not interpreted).
    :param attempts: how many HTTP requests this image took (more than 1: retries, some of which
        may have been billed).
    """

    png: bytes = field(repr=False)
    width: int
    height: int
    model: str
    prompt: str
    deployment: str = ""
    request_id: str | None = None
    usage: Mapping[str, Any] | None = None
    response: Mapping[str, Any] = field(default_factory=dict, repr=False)
    attempts: int = 1
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.png).hexdigest())

    @property
    def size_bytes(self) -> int:
        """Length of the PNG in bytes."""
        return len(self.png)


# Where a record field goes. Every field goes to XCom unless it says otherwise.
_XCOM, _SIDECAR, _LINEAGE = "xcom", "sidecar", "lineage"


def _to(*targets: str) -> dict[str, frozenset[str]]:
    """Field metadata: where a record field goes."""
    return {"to": frozenset(targets)}


@dataclass(frozen=True)
class ImageRecord:
    """The result of one MAI task: what was asked, what came back, and where it is.

    The one definition of the result's fields: :meth:`to_xcom` (the task's ``return_value``),
    :meth:`to_sidecar` (the JSON written beside a PNG) and :meth:`lineage_fields` (the OpenLineage
    run facet) all derive from it.
    """

    operation: str = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    prompt: str = field(metadata=_to(_XCOM, _SIDECAR))
    deployment: str = field(metadata=_to(_XCOM, _SIDECAR))
    model: str = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    width: int = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    height: int = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    sha256: str = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    size_bytes: int = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    request_id: str | None = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    usage: dict[str, Any] | None = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    #: HTTP requests this task sent for the image (0 when an earlier image was reused).
    attempts: int = field(metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    request_fingerprint: str = field(metadata=_to(_XCOM, _SIDECAR))
    #: The service that made the image (a reused image must come from the same one).
    endpoint: str | None = field(default=None, metadata=_to(_XCOM, _SIDECAR))
    #: Where an edit's input came from (a URI), or None.
    source_image: str | None = field(default=None, metadata=_to(_XCOM, _SIDECAR))
    created_utc: str = field(default="", metadata=_to(_XCOM, _SIDECAR))
    #: Where the PNG was written, or None when it travels in XCom. The sidecar records it too: the UI
    #: plugin shows an image only through a sidecar naming the location it was read from.
    uri: str | None = field(default=None, metadata=_to(_XCOM, _SIDECAR))
    #: The PNG as base64, only when it travels in XCom.
    b64_json: str | None = field(default=None, metadata=_to(_XCOM))
    sidecar_uri: str | None = field(default=None, metadata=_to(_XCOM))
    #: True when an earlier image answering the same request was returned and nothing was sent.
    reused: bool = field(default=False, metadata=_to(_XCOM, _LINEAGE))
    ai_generated: bool = field(default=True, metadata=_to(_XCOM, _SIDECAR, _LINEAGE))
    disclosure: str = field(default=AI_DISCLOSURE, metadata=_to(_SIDECAR))
    generator: str = field(default=GENERATOR, metadata=_to(_SIDECAR))
    #: The task instance that wrote the image (a reused image keeps its writer's): the UI plugin
    #: shows it only to users who may read this DAG (see docs/ui.md, "What the plugin trusts").
    dag_id: str | None = field(default=None, metadata=_to(_SIDECAR))
    run_id: str | None = field(default=None, metadata=_to(_SIDECAR))
    task_id: str | None = field(default=None, metadata=_to(_SIDECAR))
    map_index: int | None = field(default=None, metadata=_to(_SIDECAR))

    @classmethod
    def from_image(cls, image: MaiImage, request: ImageRequest, *, endpoint: str) -> ImageRecord:
        """The record of an image the service at ``endpoint`` just returned for ``request``."""
        return cls(
            endpoint=endpoint,
            operation=request.operation,
            prompt=image.prompt,
            deployment=image.deployment,
            model=image.model,
            width=image.width,
            height=image.height,
            sha256=image.sha256,
            size_bytes=image.size_bytes,
            request_id=image.request_id,
            usage=dict(image.usage) if image.usage else None,
            attempts=image.attempts,
            request_fingerprint=request.fingerprint,
            source_image=getattr(request, "source", None),
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    @classmethod
    def from_sidecar(cls, sidecar: Mapping[str, Any], **located: Any) -> ImageRecord:
        """The record of an earlier image, read back from its sidecar (fields it lacks keep defaults).

        :param located: fields the sidecar does not hold (``uri``, ``sidecar_uri``, ``reused``...).
        """
        known = {f.name for f in dataclasses.fields(cls) if _SIDECAR in f.metadata["to"]}
        values: dict[str, Any] = {"attempts": 0, "usage": None, "request_id": None}
        values.update({k: v for k, v in sidecar.items() if k in known})
        values.update(located)
        return cls(**values)

    def replace(self, **changes: Any) -> ImageRecord:
        """A copy with some fields changed (e.g. where the PNG was written)."""
        return dataclasses.replace(self, **changes)

    def with_png(self, png: bytes) -> ImageRecord:
        """A copy carrying the PNG itself as base64, for results that travel in XCom."""
        return self.replace(b64_json=base64.b64encode(png).decode("ascii"))

    def _fields(self, target: str) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if target in f.metadata["to"]}

    def to_xcom(self) -> dict[str, Any]:
        """The task's ``return_value``: JSON-serialisable, no PNG unless it travels in XCom."""
        return self._fields(_XCOM)

    def to_sidecar(self) -> dict[str, Any]:
        """The provenance JSON written beside a PNG, with the AI disclosure."""
        return self._fields(_SIDECAR)

    @classmethod
    def lineage_field_names(cls) -> tuple[str, ...]:
        """Names of the fields the OpenLineage run facet carries."""
        return tuple(f.name for f in dataclasses.fields(cls) if _LINEAGE in f.metadata["to"])

    def lineage_fields(self) -> dict[str, Any]:
        """The values of the OpenLineage run facet."""
        return self._fields(_LINEAGE)
