"""Operators that generate and edit images with Microsoft Foundry MAI deployments.

Both are thin: they build a validated request, call the hook's client, and hand the PNG to object
storage (with a provenance sidecar) or to XCom. Importing this module is cheap: it loads what a DAG
parse needs (the literal-argument checks, the extra link) and nothing else; storage, the client,
requests, urllib3 and azure-identity load only when a task runs (and Pillow never: tasks do not draw).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from airflow.sdk import BaseOperator, conf

from airflow_provider_mai.api import EDIT_OWN_FIELDS, GENERATE_OWN_FIELDS
from airflow_provider_mai.exceptions import MaiError, MaiOutputExistsError, MaiValidationError
from airflow_provider_mai.links import MaiImageLink
from airflow_provider_mai.validation import (
    IF_EXISTS_CHOICES,
    NAMING_CHOICES,
    check_png_name,
    validate_extra_params,
    validate_prompt,
    validate_size,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_mai.hooks.mai import MaiHook
    from airflow_provider_mai.inputs import ImageSource
    from airflow_provider_mai.models import EditRequest, GenerateRequest, ImageRecord, ImageRequest


_NO_OUTPUT_PATH = (
    "deferrable=True needs output_path: the triggerer writes the PNG there (an image is never carried "
    "in a trigger event or XCom)"
)


def is_literal(value: Any) -> bool:
    """Whether ``value`` is known when the DAG is parsed: not a Jinja template, not an upstream output.

    Such values are checked at once, so a bad one shows as an import error of the DAG (as official
    operators do); templated values are checked after rendering, when the task runs.
    """
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    return isinstance(value, (int, float, dict, list, tuple, type(None)))


class MaiBaseImageOperator(BaseOperator):
    """What both MAI operators share: connection, output handling, ``if_exists`` and the XCom shape.

    :param prompt: the text prompt (templated).
    :param model: the deployment name (templated); defaults to the connection's ``deployment`` extra.
    :param output_path: where to write the PNG through ``ObjectStoragePath`` (templated): any fsspec
        URI Airflow supports (``s3://``, ``abfs://``, ``gs://``, ``file://``) or a local path, naming a
        ``.png`` file. A value ending in ``/`` is a folder and the operator names the file, unique per
        DAG, run, task and map index. None: the PNG travels in XCom as base64.
    :param if_exists: when ``output_path`` already holds an image: ``"overwrite"`` (default),
        ``"skip"`` (if its sidecar records the same request, return it and spend no quota), or
        ``"fail"`` (also when another task writes it first while this one runs).
    :param naming: how the file is named when ``output_path`` is a folder: ``"run"`` (default:
        ``<dag>__<run>__<task>[__<map index>].png``, each run its own image) or ``"request"``
        (``<operation>__<deployment>__<prompt start>__<fingerprint>.png``: the same request lands at
        the same path in every run, DAG and day, so with ``if_exists="skip"`` it is made once).
    :param extra_params: more request fields for newer models (templated), e.g.
        ``{"auto_aspect_ratio": True}``.
    :param mai_conn_id: the Airflow connection of type ``mai``.
    :param deferrable: send the request from the triggerer instead of holding a worker slot while
        the image is made. Needs ``output_path`` and a running triggerer; see docs/deferral.md.
        None (default): the connection's ``deferrable`` extra, else ``[operators]
        default_deferrable``, else False - read when the task runs; a task without ``output_path``
        then runs synchronously (it says so in its log).
    """

    template_fields: Sequence[str] = ("prompt", "model", "output_path", "extra_params", "mai_conn_id")
    template_fields_renderers = {"extra_params": "json"}
    ui_color = "#e8f1fb"
    operator_extra_links = (MaiImageLink(),)
    #: Fields the request sets itself, which ``extra_params`` cannot (checked at parse time too).
    own_fields: ClassVar[frozenset[str]] = GENERATE_OWN_FIELDS

    def __init__(
        self,
        *,
        prompt: str,
        model: str | None = None,
        output_path: str | ObjectStoragePath | None = None,
        if_exists: str = "overwrite",
        naming: str = "run",
        extra_params: dict[str, Any] | None = None,
        mai_conn_id: str = "mai_default",
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        if deferrable and output_path is None:
            raise ValueError(_NO_OUTPUT_PATH)
        if if_exists not in IF_EXISTS_CHOICES:
            raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS_CHOICES)}; got {if_exists!r}")
        if naming not in NAMING_CHOICES:
            raise ValueError(f"naming must be one of {', '.join(NAMING_CHOICES)}; got {naming!r}")
        self.prompt = prompt
        self.model = model
        self.output_path = output_path
        self.if_exists = if_exists
        self.naming = naming
        self.extra_params = extra_params
        self.mai_conn_id = mai_conn_id
        # What is known now is checked now: a bad literal is an import error of the DAG.
        if is_literal(prompt):
            validate_prompt(prompt)
        if is_literal(extra_params):
            validate_extra_params(extra_params, self.own_fields)
        if isinstance(output_path, str) and is_literal(output_path) and not output_path.endswith("/"):
            check_png_name(output_path.rsplit("/", 1)[-1], output_path)

    @cached_property
    def hook(self) -> MaiHook:
        """The hook for ``mai_conn_id`` (one pooled session for the task)."""
        from airflow_provider_mai.hooks.mai import MaiHook

        return MaiHook(mai_conn_id=self.mai_conn_id)

    def _request(self) -> ImageRequest:
        """What is asked, validated once (subclasses build it from their arguments)."""
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        request = self._request()
        location = self._location(context, request)
        if self._deferring(location):
            if location is None:
                raise MaiValidationError(_NO_OUTPUT_PATH)
            reused = self._reusable(request, location)
            if reused is None:
                self._defer(request, location)
            self._record = reused
        else:
            self._record = self._produce(request, location)
        return self._record.to_xcom()

    def _deferring(self, location: ObjectStoragePath | None) -> bool:
        """Whether this run defers: the task's ``deferrable``, else the connection's extra, else
        ``[operators] default_deferrable``. A default does not apply to a task that cannot defer
        (no ``output_path``: the PNG travels in XCom), which runs synchronously."""
        if self.deferrable is not None:
            return bool(self.deferrable)
        from_connection = self.hook.settings.deferrable
        if from_connection is not None:
            chosen, source = from_connection, f"connection {self.mai_conn_id!r} (extra deferrable)"
        else:
            chosen = conf.getboolean("operators", "default_deferrable", fallback=False)
            source = "[operators] default_deferrable"
        if chosen and location is None:
            self.log.info("%s asks for deferral; without output_path this task runs synchronously", source)
            return False
        return chosen

    def _defer(self, request: ImageRequest, location: ObjectStoragePath) -> NoReturn:
        """Hand the request to the triggerer with small kwargs (no key, token or bytes)."""
        from airflow_provider_mai.triggers.mai import MaiImageTrigger

        source = getattr(request, "source", None)
        if request.operation == "edit" and not source:
            raise MaiValidationError(
                "deferrable=True needs the edit input as a location (a path, a URI or an upstream result "
                "with a uri): image bytes are not stored in the trigger's kwargs"
            )
        existing_sha256 = None
        if self.if_exists == "overwrite":
            # The image asked to be replaced may answer this very request: the trigger must not
            # return it as its result (only an image written after deferral, by a restarted trigger).
            existing, _why = self._matching(request, location)
            existing_sha256 = existing.sha256 if existing is not None else None
        trigger = MaiImageTrigger(
            mai_conn_id=self.mai_conn_id,
            operation=request.operation,
            deployment=request.deployment,
            prompt=request.prompt,
            output_uri=str(location),
            fingerprint=request.fingerprint,
            width=getattr(request, "width", None),
            height=getattr(request, "height", None),
            extra_params=dict(request.extra_params),
            source_image=source,
            exclusive=self.if_exists == "fail",
            existing_sha256=existing_sha256,
        )
        self.log.info("Deferring: the triggerer sends the request and writes %s", location)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=self.execution_timeout)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: push its record (as the sync mode does) or raise its error.

        Everything needed is in ``event`` (``dag.test()`` passes nothing else)."""
        from airflow_provider_mai.models import ImageRecord
        from airflow_provider_mai.triggers.mai import error_from_payload

        if not isinstance(event, dict) or event.get("status") not in ("success", "error"):
            raise MaiError(f"the MAI trigger sent an unexpected event ({type(event).__name__})")
        if event["status"] == "error":
            raise error_from_payload(event)
        self._record = ImageRecord(**event["record"])
        self.log.info(
            "%s %dx%d PNG at %s (request id %s, %d attempt(s))",
            "Reused" if self._record.reused else "Made",
            self._record.width,
            self._record.height,
            self._record.uri,
            self._record.request_id,
            self._record.attempts,
        )
        return self._record.to_xcom()

    def _location(self, context: Context, request: ImageRequest) -> ObjectStoragePath | None:
        from airflow_provider_mai import storage

        if self.output_path is None or self.output_path == "":
            return None
        if self.naming == "request":
            name = storage.request_file_name(request)
        else:
            ti = context["ti"]
            name = storage.default_file_name(
                ti.dag_id, context["run_id"], ti.task_id, getattr(ti, "map_index", -1)
            )
        return storage.resolve_output_path(self.output_path, name)

    def _matching(self, request: ImageRequest, location: ObjectStoragePath) -> tuple[ImageRecord | None, str]:
        """The record of an intact image at ``location`` that answers ``request`` (else None), and why."""
        from airflow_provider_mai import storage

        settings = self.hook.settings
        return storage.find_reusable(
            location, request.fingerprint, endpoint=settings.endpoint, max_bytes=settings.max_response_bytes
        )

    def _reusable(self, request: ImageRequest, location: ObjectStoragePath) -> ImageRecord | None:
        """Everything before the request: the output checked, ``if_exists`` applied; a reusable
        earlier image's record, else None (send)."""
        from airflow_provider_mai import storage

        storage.check_output(location)
        if self.if_exists == "fail" and location.exists():
            raise MaiOutputExistsError(f"{location} already exists and if_exists='fail'")
        if self.if_exists == "skip":
            reused, why = self._matching(request, location)
            if reused is not None:
                self.log.info("%s already holds this request's image; skipped (no quota spent)", location)
                return reused
            self.log.info("%s: %s; sending the request", location, why)
        return None

    def _produce(self, request: ImageRequest, location: ObjectStoragePath | None) -> ImageRecord:
        from airflow_provider_mai import storage
        from airflow_provider_mai.models import ImageRecord

        if location is not None:
            reused = self._reusable(request, location)
            if reused is not None:
                return reused
        image = self.hook.get_conn().send(request)
        record = ImageRecord.from_image(image, request, endpoint=self.hook.settings.endpoint)
        if location is None:
            self.log.info(
                "%s %dx%d PNG (%d bytes, request id %s, %d attempt(s)); returned in XCom as base64",
                request.operation.capitalize(),
                image.width,
                image.height,
                image.size_bytes,
                image.request_id,
                image.attempts,
            )
            return record.with_png(image.png)
        record = storage.store_image(
            location,
            image,
            request,
            endpoint=self.hook.settings.endpoint,
            exclusive=self.if_exists == "fail",
            log=self.log,
        )
        return record

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage datasets (the edit's input, the written PNG) and the deployment's facets.

        Called by apache-airflow-providers-openlineage when it is installed; returns None (no
        lineage) when it is not.
        """
        try:
            from airflow_provider_mai.lineage import operator_lineage
        except ImportError:
            return None
        record = getattr(self, "_record", None)
        if record is None:
            return None
        return operator_lineage(record, endpoint=self.hook.settings.endpoint)


class MaiGenerateImageOperator(MaiBaseImageOperator):
    """Generate an image from a text prompt with a MAI deployment.

    Returns (XCom ``return_value``) a dict: ``uri`` (where the PNG was written, or None),
    ``b64_json`` (only without ``output_path``), ``width``, ``height`` (read from the PNG),
    ``model``, ``deployment``, ``prompt``, ``sha256``, ``size_bytes``, ``request_id``, ``usage``,
    ``attempts``, ``sidecar_uri``, ``reused`` and the request's provenance (``operation``,
    ``endpoint``, ``request_fingerprint``, ``created_utc``, ``ai_generated``).

    :param prompt: what to draw (templated).
    :param width: pixels (templated; a rendered string is turned into an int). Each side >= 768 and
        width x height <= 1,048,576; the service may snap sides to a multiple of 16.
    :param height: pixels (templated), as ``width``.
    :param model: the deployment name (templated); defaults to the connection's ``deployment``.
    :param output_path: where to write the PNG (templated); see :class:`MaiBaseImageOperator`.
    :param if_exists: ``"overwrite"``, ``"skip"`` or ``"fail"``; see :class:`MaiBaseImageOperator`.
    :param naming: ``"run"`` or ``"request"``: how a folder ``output_path`` names the file; see
        :class:`MaiBaseImageOperator`.
    :param extra_params: more JSON fields for newer models (templated).
    :param mai_conn_id: the Airflow connection of type ``mai``.
    """

    template_fields: Sequence[str] = (*MaiBaseImageOperator.template_fields, "width", "height")

    def __init__(self, *, width: int | str = 1024, height: int | str = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.height = height
        if is_literal(width) and is_literal(height):
            validate_size(width, height)

    def _request(self) -> GenerateRequest:
        return self.hook.generate_request(
            self.prompt,
            width=self.width,
            height=self.height,
            model=self.model,
            extra_params=self.extra_params,
        )


class MaiEditImageOperator(MaiBaseImageOperator):
    """Edit an image with a text prompt (MAI-Image-2.5 and 2.5-Flash deployments).

    Returns the same dict as :class:`MaiGenerateImageOperator`, with ``source_image`` naming the
    input's location. The output keeps the input's aspect ratio, scaled towards one megapixel.

    :param prompt: the edit to make (templated).
    :param image: the input (templated): an upstream MAI task's result (``generate.output``), a local
        path, an fsspec URI (``s3://``, ``abfs://``...), an ``ObjectStoragePath``, or PNG/JPEG bytes.
        Its type is judged by its bytes; at most the connection's ``max_input_mb`` is read.
    :param model: the deployment name (templated); defaults to the connection's ``deployment``.
    :param output_path: where to write the PNG (templated); see :class:`MaiBaseImageOperator`.
    :param if_exists: ``"overwrite"``, ``"skip"`` or ``"fail"``; see :class:`MaiBaseImageOperator`.
    :param naming: ``"run"`` or ``"request"``: how a folder ``output_path`` names the file; see
        :class:`MaiBaseImageOperator`.
    :param extra_params: more form fields for newer models (templated).
    :param mai_conn_id: the Airflow connection of type ``mai``.
    """

    template_fields: Sequence[str] = (*MaiBaseImageOperator.template_fields, "image")
    ui_color = "#fbeee8"
    own_fields = EDIT_OWN_FIELDS

    def __init__(self, *, image: ImageSource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = image

    def _request(self) -> EditRequest:
        if self.image is None or self.image == "":
            raise MaiValidationError("image is required: pass an upstream MAI result, a path, a URI or bytes")
        return self.hook.edit_request(
            self.image, self.prompt, model=self.model, extra_params=self.extra_params
        )
