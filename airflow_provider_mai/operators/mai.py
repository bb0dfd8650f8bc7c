"""Operators that generate and edit images with Microsoft Foundry MAI deployments.

Both are thin: they resolve inputs, call :class:`~airflow_provider_mai.hooks.mai.MaiHook`, and hand
the PNG to object storage (with a provenance sidecar) or to XCom. Importing this module is cheap:
requests, azure-identity and Pillow load only when a task runs.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_mai.exceptions import MaiOutputExistsError, MaiValidationError
from airflow_provider_mai.links import MaiImageLink
from airflow_provider_mai.storage import IF_EXISTS_CHOICES

#: Result fields that come from the image (the sidecar records the same ones).
RESULT_FIELDS = (
    "width",
    "height",
    "model",
    "deployment",
    "prompt",
    "sha256",
    "size_bytes",
    "request_id",
    "usage",
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_mai.hooks.mai import MaiHook, MaiImage
    from airflow_provider_mai.storage import ImageSource, LoadedImage


class MaiBaseImageOperator(BaseOperator):
    """What both MAI operators share: connection, output handling, ``if_exists`` and the XCom shape.

    :param prompt: the text prompt (templated).
    :param model: the deployment name (templated); defaults to the connection's ``deployment`` extra.
    :param output_path: where to write the PNG through ``ObjectStoragePath`` (templated): any fsspec
        URI Airflow supports (``s3://``, ``abfs://``, ``gs://``, ``file://``) or a local path. A value
        ending in ``/`` is a folder and the operator names the file, unique per DAG, run, task and map
        index. None: the PNG travels in XCom as base64.
    :param if_exists: when ``output_path`` already holds an image: ``"overwrite"`` (default),
        ``"skip"`` (if its sidecar records the same request, return it and spend no quota), or
        ``"fail"``.
    :param extra_params: more request fields for newer models (templated), e.g.
        ``{"auto_aspect_ratio": True}``.
    :param mai_conn_id: the Airflow connection of type ``mai``.
    """

    template_fields: Sequence[str] = ("prompt", "model", "output_path", "extra_params")
    template_fields_renderers = {"extra_params": "json"}
    ui_color = "#e8f1fb"
    operator_extra_links = (MaiImageLink(),)
    operation = "generate"

    def __init__(
        self,
        *,
        prompt: str,
        model: str | None = None,
        output_path: str | ObjectStoragePath | None = None,
        if_exists: str = "overwrite",
        extra_params: dict[str, Any] | None = None,
        mai_conn_id: str = "mai_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if if_exists not in IF_EXISTS_CHOICES:
            raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS_CHOICES)}; got {if_exists!r}")
        self.prompt = prompt
        self.model = model
        self.output_path = output_path
        self.if_exists = if_exists
        self.extra_params = extra_params
        self.mai_conn_id = mai_conn_id

    @cached_property
    def hook(self) -> MaiHook:
        """The hook for ``mai_conn_id`` (one pooled session for the task)."""
        from airflow_provider_mai.hooks.mai import MaiHook

        return MaiHook(mai_conn_id=self.mai_conn_id)

    # -- subclasses fill these in ---------------------------------------------------------------

    def _request(self) -> dict[str, Any]:
        """What is being asked, as plain data: fingerprinted for ``if_exists="skip"``."""
        raise NotImplementedError

    def _call(self) -> MaiImage:
        raise NotImplementedError

    def _source_location(self) -> str | None:
        return None

    # -- shared flow ----------------------------------------------------------------------------

    def _location(self, context: Context) -> ObjectStoragePath | None:
        from airflow_provider_mai import storage

        if self.output_path is None or self.output_path == "":
            return None
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        name = storage.default_file_name(ti.dag_id, context["run_id"], ti.task_id, map_index)
        return storage.resolve_output_path(self.output_path, name)

    def execute(self, context: Context) -> dict[str, Any]:
        self._output_location = self._location(context)
        self._last_result = self._produce(self._output_location)
        return self._last_result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage datasets (the edit's input, the written PNG) and the deployment's facets.

        Called by apache-airflow-providers-openlineage when it is installed; returns None (no
        lineage) when it is not.
        """
        try:
            from airflow_provider_mai.lineage import operator_lineage
        except ImportError:
            return None
        return operator_lineage(
            operation=self.operation,
            result=getattr(self, "_last_result", None),
            source=self._source_location(),
            endpoint=self.hook.settings.endpoint,
            output_location=getattr(self, "_output_location", None),
        )

    def _produce(self, location: ObjectStoragePath | None) -> dict[str, Any]:
        from airflow_provider_mai import storage
        from airflow_provider_mai.validation import validate_prompt

        validate_prompt(self.prompt)
        request = self._request()
        fingerprint = storage.request_fingerprint(**request)
        if location is not None:
            storage.check_writable(location)
            existing = storage.read_sidecar(location) if self.if_exists != "overwrite" else None
            if self.if_exists == "fail" and (existing is not None or location.exists()):
                raise MaiOutputExistsError(f"{location} already exists and if_exists='fail'")
            if self.if_exists == "skip" and existing is not None:
                reused = self._reuse(location, existing, fingerprint)
                if reused is not None:
                    return reused
        image = self._call()
        if location is None:
            self.log.info(
                "%s %dx%d PNG (%d bytes, request id %s); returned in XCom as base64",
                self.operation.capitalize(),
                image.width,
                image.height,
                image.size_bytes,
                image.request_id,
            )
            return self._result(image, None)
        sidecar = storage.build_sidecar(
            image, operation=self.operation, fingerprint=fingerprint, source=self._source_location()
        )
        storage.write_image(location, image, sidecar)
        self.log.info(
            "Wrote %dx%d PNG (%d bytes, request id %s) to %s",
            image.width,
            image.height,
            image.size_bytes,
            image.request_id,
            location,
        )
        return self._result(image, location)

    def _reuse(
        self, location: ObjectStoragePath, sidecar: Mapping[str, Any], fingerprint: str
    ) -> dict[str, Any] | None:
        """The earlier result at ``location`` when it answers this same request and is intact."""
        import hashlib

        if sidecar.get("request_fingerprint") != fingerprint:
            self.log.info("%s holds an image of another request; generating a new one", location)
            return None
        png = location.read_bytes()
        if hashlib.sha256(png).hexdigest() != sidecar.get("sha256"):
            self.log.warning("%s does not match its sidecar's checksum; generating a new one", location)
            return None
        self.log.info("%s already holds this request's image; skipped (no quota spent)", location)
        from airflow_provider_mai.storage import sidecar_path

        return {
            "uri": str(location),
            "b64_json": None,
            **{key: sidecar.get(key) for key in RESULT_FIELDS},
            "sidecar_uri": str(sidecar_path(location)),
            "reused": True,
        }

    @staticmethod
    def _result(image: MaiImage, location: ObjectStoragePath | None) -> dict[str, Any]:
        from airflow_provider_mai.storage import sidecar_path

        return {
            "uri": str(location) if location is not None else None,
            "b64_json": base64.b64encode(image.png).decode("ascii") if location is None else None,
            "width": image.width,
            "height": image.height,
            "model": image.model,
            "deployment": image.deployment,
            "prompt": image.prompt,
            "sha256": image.sha256,
            "size_bytes": image.size_bytes,
            "request_id": image.request_id,
            "usage": dict(image.usage) if image.usage else None,
            "sidecar_uri": str(sidecar_path(location)) if location is not None else None,
            "reused": False,
        }


class MaiGenerateImageOperator(MaiBaseImageOperator):
    """Generate an image from a text prompt with a MAI deployment.

    Returns (XCom ``return_value``) a dict: ``uri`` (where the PNG was written, or None),
    ``b64_json`` (only without ``output_path``), ``width``, ``height`` (read from the PNG),
    ``model``, ``deployment``, ``prompt``, ``sha256``, ``size_bytes``, ``request_id``, ``usage``,
    ``sidecar_uri`` and ``reused``.

    :param prompt: what to draw (templated).
    :param width: pixels (templated; a rendered string is turned into an int). Each side >= 768 and
        width x height <= 1,048,576; the service may snap sides to a multiple of 16.
    :param height: pixels (templated), as ``width``.
    :param model: the deployment name (templated); defaults to the connection's ``deployment``.
    :param output_path: where to write the PNG (templated); see :class:`MaiBaseImageOperator`.
    :param if_exists: ``"overwrite"``, ``"skip"`` or ``"fail"``; see :class:`MaiBaseImageOperator`.
    :param extra_params: more JSON fields for newer models (templated).
    :param mai_conn_id: the Airflow connection of type ``mai``.
    """

    template_fields: Sequence[str] = (*MaiBaseImageOperator.template_fields, "width", "height")
    operation = "generate"

    def __init__(self, *, width: int | str = 1024, height: int | str = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.height = height

    def _size(self) -> tuple[int, int]:
        from airflow_provider_mai.validation import validate_size

        return validate_size(self.width, self.height)

    def _request(self) -> dict[str, Any]:
        width, height = self._size()
        return {
            "operation": self.operation,
            "deployment": self.model or self.hook.settings.deployment,
            "prompt": self.prompt,
            "width": width,
            "height": height,
            "extra_params": self.extra_params or {},
        }

    def _call(self) -> MaiImage:
        width, height = self._size()
        return self.hook.generate_image(
            self.prompt, width=width, height=height, model=self.model, extra_params=self.extra_params
        )


class MaiEditImageOperator(MaiBaseImageOperator):
    """Edit an image with a text prompt (MAI-Image-2.5 and 2.5-Flash deployments).

    Returns the same dict as :class:`MaiGenerateImageOperator`. The output keeps the input's aspect
    ratio, scaled towards one megapixel.

    :param prompt: the edit to make (templated).
    :param image: the input (templated): an upstream MAI task's result (``generate.output``), a local
        path, an fsspec URI (``s3://``, ``abfs://``...), an ``ObjectStoragePath``, or PNG/JPEG bytes.
        Its type is judged by its bytes.
    :param model: the deployment name (templated); defaults to the connection's ``deployment``.
    :param output_path: where to write the PNG (templated); see :class:`MaiBaseImageOperator`.
    :param if_exists: ``"overwrite"``, ``"skip"`` or ``"fail"``; see :class:`MaiBaseImageOperator`.
    :param extra_params: more form fields for newer models (templated).
    :param mai_conn_id: the Airflow connection of type ``mai``.
    """

    template_fields: Sequence[str] = (*MaiBaseImageOperator.template_fields, "image")
    ui_color = "#fbeee8"
    operation = "edit"

    def __init__(self, *, image: ImageSource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = image

    @cached_property
    def _input(self) -> LoadedImage:
        from airflow_provider_mai.storage import read_image_source
        from airflow_provider_mai.validation import validate_edit_image

        if self.image is None or self.image == "":
            raise MaiValidationError("image is required: pass an upstream MAI result, a path, a URI or bytes")
        loaded = read_image_source(self.image)
        validate_edit_image(loaded.data)
        return loaded

    def _source_location(self) -> str | None:
        return self._input.location

    def _request(self) -> dict[str, Any]:
        import hashlib

        return {
            "operation": self.operation,
            "deployment": self.model or self.hook.settings.deployment,
            "prompt": self.prompt,
            "image_sha256": hashlib.sha256(self._input.data).hexdigest(),
            "extra_params": self.extra_params or {},
        }

    def _call(self) -> MaiImage:
        return self.hook.edit_image(
            self._input.data, self.prompt, model=self.model, extra_params=self.extra_params
        )
