"""MaiImageTrigger: the deferrable mode's request, sent and written in the triggerer.

The worker renders, validates, resolves the output and decides reuse; then it defers with small
kwargs (connection id, request fields, output URI, fingerprint - never a key, a token or image
bytes). Here the connection is read through the triggerer's supervisor, a result already written
for this request is reused (a restart after the write), else the request is sent with the client's
rules, the PNG and sidecar are written through :mod:`airflow_provider_mai.storage` (blocking I/O off
the event loop) and ONE small event comes back: the record, or the error to raise on resume.

A restart before the write is seen through an in-flight marker beside the output (written before
sending, removed once an outcome is reported): a run that finds one of its request re-sends it,
logged as possibly billed and counted in ``attempts``, or - ``retry_sent_requests=false`` - fails
at once with :class:`~airflow_provider_mai.exceptions.MaiUnfinishedRequestError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import ImageRequest, MaiImage

log = logging.getLogger(__name__)
#: The most attempts an in-flight marker is believed to record (it is read back from storage).
_MAX_MARKED_ATTEMPTS = 1000
#: Threads of the stand-in transport below, one per request in flight: as many as a triggerer's
#: default ``[triggerer] capacity``. asyncio's default executor has min(32, cores + 4) threads - 6
#: on 2 cores - and also runs the trigger's short file I/O: requests waiting there capped a
#: triggerer at 6 in flight (seen on the stack: the 7th POST of a batch left 51 s after the 6th).
SEND_THREADS = 1000
_senders: concurrent.futures.ThreadPoolExecutor | None = None


async def send_request(settings: MaiSettings, request: ImageRequest, logger: Any) -> MaiImage:
    """The one seam to the client. Stand-in until the asyncio client lands: the sync client, off
    the event loop (same rules, same errors)."""
    from airflow.sdk.log import mask_secret

    from airflow_provider_mai.client import MaiClient

    def run() -> MaiImage:
        client = MaiClient(settings, log=logger, on_secret=mask_secret)
        try:
            return client.send(request)
        finally:
            client.close()

    global _senders
    if _senders is None:  # threads start as needed, up to SEND_THREADS
        _senders = concurrent.futures.ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="mai-send")
    # As asyncio.to_thread does: the thread sees this task's context (the trigger's log routing).
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_senders, context.run, run)


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
    :param existing_sha256: the sha256 of the image at ``output_uri`` that answered this request
        when the task deferred with ``if_exists="overwrite"``, or None: it was asked to be replaced,
        so it is never returned as this trigger's result (an image written after deferral is).
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
        existing_sha256: str | None = None,
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
        self.existing_sha256 = existing_sha256

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
                "existing_sha256": self.existing_sha256,
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
        from airflow_provider_mai.exceptions import MaiError

        settings = await self._settings()
        request = await asyncio.to_thread(self._request, settings)
        # Off the event loop: an ObjectStoragePath made on it cannot read its store's connection
        # (an s3:// path then goes without credentials: NoCredentialsError).
        location = await asyncio.to_thread(storage.open_location, self.output_uri)
        # A restart after the write: this request's image is there already - never send it twice.
        reused, _why = await asyncio.to_thread(
            storage.find_reusable,
            location,
            self.fingerprint,
            endpoint=settings.endpoint,
            max_bytes=settings.max_response_bytes,
        )
        if reused is not None and reused.sha256 != self.existing_sha256:
            self.log.info("%s already holds this request's image (written before a restart)", location)
            return reused.to_xcom()
        if reused is not None:
            self.log.info("%s holds the image this task was asked to overwrite; sending", location)
        # A restart before the write: an earlier run may have sent it (marker), or a crash left a
        # marker of another request there (replaced). The marker is written before sending and
        # removed once an outcome is reported; a cancelled run (a killed triggerer) leaves it.
        earlier = await asyncio.to_thread(self._earlier_attempts, location, settings)
        await asyncio.to_thread(storage.write_inflight, location, self._marker(earlier + 1))
        try:
            image = await send_request(settings, request, self.log)
            if earlier:
                image = dataclasses.replace(image, attempts=image.attempts + earlier)
            record = await asyncio.to_thread(
                storage.store_image,
                location,
                image,
                request,
                endpoint=settings.endpoint,
                exclusive=self.exclusive,
                log=self.log,
            )
        except MaiError as exc:
            # An outcome with its own accounting (attempts, possibly billed): what happens next is
            # the task's call (retries, a clear), as in the synchronous mode.
            exc.attempts += earlier
            await self._forget(location)
            raise
        await self._forget(location)
        return record.to_xcom()

    def _marker(self, attempts: int) -> dict[str, Any]:
        """The in-flight marker: which request, how many attempts were sent so far, when, from where
        (no secret: the fingerprint is a hash of the request)."""
        return {
            "fingerprint": self.fingerprint,
            "attempts": attempts,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def _earlier_attempts(self, location: ObjectStoragePath, settings: MaiSettings) -> int:
        """Attempts that earlier, unfinished runs of this request sent (0: none), after applying
        the connection's ``retry_sent_requests`` to them. Blocking: run off the event loop."""
        from airflow_provider_mai import storage
        from airflow_provider_mai.exceptions import MaiUnfinishedRequestError

        marker = storage.read_inflight(location)
        if marker is None:
            return 0
        if marker.get("fingerprint") != self.fingerprint:
            self.log.info("%s: replacing an in-flight marker of another request (left by a crash)", location)
            return 0
        attempts = marker.get("attempts")
        # Read from storage, so bounded: at least the one request the marker stands for.
        earlier = attempts if type(attempts) is int and 0 < attempts <= _MAX_MARKED_ATTEMPTS else 1
        where = f"from {str(marker.get('host'))[:100]} at {str(marker.get('since'))[:40]}"
        if not settings.retry_sent_requests:
            storage.remove_inflight(location)  # reported: clearing the task is a deliberate resend
            raise MaiUnfinishedRequestError(
                f"an earlier run of this deferred request for {location} sent it ({earlier} attempt(s), "
                f"{where}) and did not finish (a triggerer restart or a killed trigger): the service may "
                "have made (and billed) the image. Not sent again because connection "
                f"{settings.conn_id!r} sets retry_sent_requests=false; clear the task to send it anyway",
                attempts=earlier,
                possibly_billed=True,
            )
        self.log.warning(
            "Sending the MAI request for %s again, possibly billed twice: a previous run of this trigger "
            "sent it (%d attempt(s), %s) and did not finish (a triggerer restart or a killed trigger); "
            "connection %r sets retry_sent_requests=true. The earlier attempts count in 'attempts'.",
            location,
            earlier,
            where,
            settings.conn_id,
        )
        return earlier

    async def _forget(self, location: ObjectStoragePath) -> None:
        """Remove the in-flight marker; a failure is logged, never raised (the outcome stands: a
        leftover marker only makes a later run of the same request warn before sending)."""
        from airflow_provider_mai import storage

        try:
            await asyncio.to_thread(storage.remove_inflight, location)
        except Exception as exc:  # the store's text may quote a signed URL: name the class only
            self.log.warning(
                "Could not remove the in-flight marker beside %s (%s)", location, type(exc).__name__
            )
