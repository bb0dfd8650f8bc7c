"""MaiImageTrigger: the deferrable mode's request, sent and written in the triggerer.

The worker renders, validates, resolves the output and decides reuse; then it defers with small
kwargs (connection id, request fields, output URI, fingerprint - never a key, a token or image
bytes). Here the connection is read through the triggerer's supervisor, a result already written
for this request is reused (a restart after the write), else the request is sent with the client's
rules, the PNG and sidecar are written through :mod:`airflow_provider_mai.storage` (blocking I/O off
the event loop) and ONE small event comes back: the record, or the error to raise on resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import ImageRequest, MaiImage

log = logging.getLogger(__name__)


async def send_request(settings: MaiSettings, request: ImageRequest, logger: Any) -> MaiImage:
    """The one seam to the client: the asyncio client, on the triggerer's event loop (the sync
    client's rules and errors; a new token is fetched, and masked, in a thread)."""
    from airflow.sdk.log import mask_secret

    from airflow_provider_mai.client.async_core import AsyncMaiClient

    pacers = await _redis_pacers(settings, logger)
    async with AsyncMaiClient(settings, log=logger, on_secret=mask_secret, pacer_factory=pacers) as client:
        return await client.send(request)


async def _redis_pacers(settings: MaiSettings, logger: Any) -> Any:
    """With ``rpm`` and ``rpm_redis_conn_id``, the Redis schedules the workers share (as the hook
    builds them); else None: this host's file schedule."""
    if not (settings.rpm and settings.rpm_redis_conn_id):
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    from airflow_provider_mai.client.pacing.redis_schedule import pacer_factory, undefined_connection

    try:
        redis_conn = await BaseHook.aget_connection(settings.rpm_redis_conn_id)
    except AirflowNotFoundException:
        raise undefined_connection(settings) from None
    if redis_conn.password:
        await asyncio.to_thread(mask_secret, redis_conn.password)
    return pacer_factory(settings, redis_conn, logger)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """An error as a small event: its class (a provider error class name), message and fields."""
    from airflow_provider_mai.exceptions import MaiError

    if not isinstance(exc, MaiError):
        # Unknown text may quote anything: name the class only (the triggerer's log has the rest).
        return {
            "status": "error",
            "error": "MaiError",
            "message": f"the trigger failed ({type(exc).__name__})",
        }
    return {
        "status": "error",
        "error": type(exc).__name__,
        "message": exc.message[:2000],
        "status_code": exc.status_code,
        "error_code": exc.error_code,
        "request_id": exc.request_id,
        "attempts": exc.attempts,
        "possibly_billed": exc.possibly_billed,
    }


def error_from_payload(event: dict[str, Any]) -> Exception:
    """The same error class the synchronous mode raises, rebuilt from an error event."""
    from airflow_provider_mai import exceptions

    cls = getattr(exceptions, str(event.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, exceptions.MaiError)):
        cls = exceptions.MaiError
    return cls(
        str(event.get("message", "the MAI trigger failed")),
        status_code=event.get("status_code"),
        error_code=event.get("error_code"),
        request_id=event.get("request_id"),
        attempts=int(event.get("attempts") or 0),
        possibly_billed=bool(event.get("possibly_billed")),
    )


class MaiImageTrigger(BaseTrigger):
    """Send one MAI image request from the triggerer and write its PNG and sidecar.

    :param mai_conn_id: the connection (read in the triggerer; its secrets never travel here).
    :param operation: ``"generate"`` or ``"edit"``.
    :param deployment: the deployment name.
    :param prompt: the prompt.
    :param width: pixels (generate).
    :param height: pixels (generate).
    :param extra_params: more request fields.
    :param source_image: an edit's input, as a location (path or URI; never bytes).
    :param output_uri: where the PNG goes (the sidecar beside it).
    :param fingerprint: the request fingerprint the worker computed (checked again here).
    :param exclusive: refuse to replace an existing PNG (``if_exists="fail"``).
    """

    def __init__(
        self,
        *,
        mai_conn_id: str,
        operation: str,
        deployment: str,
        prompt: str,
        output_uri: str,
        fingerprint: str,
        width: int | None = None,
        height: int | None = None,
        extra_params: dict[str, Any] | None = None,
        source_image: str | None = None,
        exclusive: bool = False,
    ) -> None:
        super().__init__()
        self.mai_conn_id = mai_conn_id
        self.operation = operation
        self.deployment = deployment
        self.prompt = prompt
        self.output_uri = output_uri
        self.fingerprint = fingerprint
        self.width = width
        self.height = height
        self.extra_params = dict(extra_params or {})
        self.source_image = source_image
        self.exclusive = exclusive

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "mai_conn_id": self.mai_conn_id,
                "operation": self.operation,
                "deployment": self.deployment,
                "prompt": self.prompt,
                "output_uri": self.output_uri,
                "fingerprint": self.fingerprint,
                "width": self.width,
                "height": self.height,
                "extra_params": self.extra_params,
                "source_image": self.source_image,
                "exclusive": self.exclusive,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            record = await self._produce()
        except Exception as exc:
            from airflow_provider_mai.exceptions import MaiError

            if not isinstance(exc, MaiError):
                self.log.exception("MAI trigger for %s failed", self.output_uri)
            yield TriggerEvent(error_payload(exc))
            return
        yield TriggerEvent({"status": "success", "record": record})

    async def _settings(self) -> MaiSettings:
        from airflow.sdk import BaseHook
        from airflow.sdk.log import mask_secret

        from airflow_provider_mai.client.settings import MaiSettings

        conn = await BaseHook.aget_connection(self.mai_conn_id)
        settings = MaiSettings.from_connection(
            self.mai_conn_id, host=conn.host, port=conn.port, password=conn.password, extra=conn.extra_dejson
        )
        for secret in settings.secrets:
            await asyncio.to_thread(mask_secret, secret)
        return settings

    def _request(self, settings: MaiSettings) -> ImageRequest:
        """The request again, from its small kwargs (an edit's input re-read from its location)."""
        from airflow_provider_mai.exceptions import MaiValidationError
        from airflow_provider_mai.models import EditRequest, GenerateRequest

        request: ImageRequest
        if self.operation == "edit":
            from airflow_provider_mai.inputs import read_image_source

            if not self.source_image:
                raise MaiValidationError("the deferred edit names no input location")
            loaded = read_image_source(
                self.source_image,
                max_bytes=settings.max_input_bytes,
                allow_http=settings.allow_http_inputs,
                conn_id=settings.conn_id,
            )
            request = EditRequest(
                loaded.data,
                self.prompt,
                deployment=self.deployment,
                extra_params=self.extra_params,
                source=loaded.location,
            )
        else:
            request = GenerateRequest(
                self.prompt,
                int(self.width or 0),
                int(self.height or 0),
                deployment=self.deployment,
                extra_params=self.extra_params,
            )
        if request.fingerprint != self.fingerprint:
            raise MaiValidationError(
                f"the request rebuilt in the triggerer differs from the one the task deferred "
                f"(was the edit input at {self.source_image} changed meanwhile?); nothing was sent"
            )
        return request

    async def _produce(self) -> dict[str, Any]:
        from airflow_provider_mai import storage

        settings = await self._settings()
        request = await asyncio.to_thread(self._request, settings)
        location = storage.open_location(self.output_uri)
        # A restart after the write: this request's image is there already - never send it twice.
        reused, _why = await asyncio.to_thread(
            storage.find_reusable,
            location,
            self.fingerprint,
            endpoint=settings.endpoint,
            max_bytes=settings.max_response_bytes,
        )
        if reused is not None:
            self.log.info("%s already holds this request's image (written before a restart)", location)
            return reused.to_xcom()
        image = await send_request(settings, request, self.log)
        record = await asyncio.to_thread(
            storage.store_image,
            location,
            image,
            request,
            endpoint=settings.endpoint,
            exclusive=self.exclusive,
            log=self.log,
        )
        return record.to_xcom()
