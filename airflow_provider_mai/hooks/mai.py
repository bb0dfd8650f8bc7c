"""MaiHook: the Airflow face of the MAI image API.

It turns an Airflow connection into :class:`~airflow_provider_mai.client.settings.MaiSettings`, owns one
:class:`~airflow_provider_mai.client.MaiClient` (``get_conn()``: one pooled session, auth, pacing,
retries), and offers the calls DAG authors use: :meth:`MaiHook.generate_image`,
:meth:`MaiHook.edit_image` and :meth:`MaiHook.test_connection`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_mai.client.settings import MaiSettings
from airflow_provider_mai.exceptions import MaiError
from airflow_provider_mai.models import EditRequest, GenerateRequest, MaiImage

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from airflow_provider_mai.client import MaiClient
    from airflow_provider_mai.inputs import ImageSource

__all__ = ["MaiHook", "MaiImage"]


class MaiHook(BaseHook):
    """Talks to Microsoft Foundry MAI image deployments (text-to-image and image edits).

    :param mai_conn_id: the Airflow connection (type ``mai``) holding endpoint and credentials.
    :param credential: an azure-identity ``TokenCredential`` to use for Entra ID instead of the one
        built from the connection (e.g. a workload identity you already hold).
    :param sleep: how the client waits between attempts and for pacing slots (default
        ``time.sleep``); tests pass a recorder.
    """

    conn_name_attr = "mai_conn_id"
    default_conn_name = "mai_default"
    conn_type = "mai"
    hook_name = "Microsoft Foundry MAI"

    def __init__(
        self,
        mai_conn_id: str = default_conn_name,
        *,
        credential: TokenCredential | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mai_conn_id = mai_conn_id
        self._credential = credential
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mai_conn_id={self.mai_conn_id!r})"

    @cached_property
    def settings(self) -> MaiSettings:
        """The connection, read and checked once per hook; its secrets registered with the masker."""
        from airflow.sdk.log import mask_secret

        conn = self.get_connection(self.mai_conn_id)
        if conn.password:
            mask_secret(conn.password)  # as stored, before it is checked: an error must not show it
        settings = MaiSettings.from_connection(
            self.mai_conn_id, host=conn.host, port=conn.port, password=conn.password, extra=conn.extra_dejson
        )
        for secret in settings.secrets:
            mask_secret(secret)
        return settings

    def get_conn(self) -> MaiClient:
        """The hook's client: one pooled HTTP session, auth, pacing and retries for every call."""
        return self._client

    @cached_property
    def _client(self) -> MaiClient:
        from airflow.sdk.log import mask_secret

        from airflow_provider_mai.client import MaiClient

        return MaiClient(
            self.settings,
            credential=self._credential,
            sleep=self._sleep,
            log=self.log,
            on_secret=mask_secret,
            pacer_factory=self._redis_pacer_factory(),
        )

    def _redis_pacer_factory(self) -> Callable[[str], Any] | None:
        """With extras ``rpm`` and ``rpm_redis_conn_id``, send slots come from that Redis server,
        shared by every worker host - and from this host's file schedule while Redis fails; else
        (None) from the file schedule of this host."""
        s = self.settings
        redis_conn_id, rpm = s.rpm_redis_conn_id, s.rpm
        if not (redis_conn_id and rpm):
            return None
        from airflow.sdk.exceptions import AirflowNotFoundException
        from airflow.sdk.log import mask_secret

        from airflow_provider_mai.client.pacing.redis_schedule import pacer_factory, undefined_connection

        try:
            redis_conn = self.get_connection(redis_conn_id)
        except AirflowNotFoundException:
            raise undefined_connection(s) from None
        if redis_conn.password:
            mask_secret(redis_conn.password)
        return pacer_factory(s, redis_conn, self.log)

    def generate_request(
        self,
        prompt: str,
        *,
        width: int | str = 1024,
        height: int | str = 1024,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> GenerateRequest:
        """The validated generation request :meth:`generate_image` sends (operators build it first,
        to fingerprint it before deciding whether to send). Nothing is sent."""
        return GenerateRequest(
            prompt,
            width,  # type: ignore[arg-type] # text from a template is coerced by the request
            height,  # type: ignore[arg-type]
            deployment=self.settings.deployment_for(model),
            extra_params=extra_params or {},
        )

    def edit_request(
        self,
        image: ImageSource,
        prompt: str,
        *,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> EditRequest:
        """The validated edit request :meth:`edit_image` sends, its input read (at most the
        connection's ``max_input_mb``; web URLs only with ``allow_http_inputs``). Nothing is sent."""
        from airflow_provider_mai.inputs import read_image_source

        s = self.settings
        loaded = read_image_source(
            image, max_bytes=s.max_input_bytes, allow_http=s.allow_http_inputs, conn_id=s.conn_id
        )
        return EditRequest(
            loaded.data,
            prompt,
            deployment=s.deployment_for(model),
            extra_params=extra_params or {},
            source=loaded.location,
        )

    def generate_image(
        self,
        prompt: str,
        *,
        width: int = 1024,
        height: int = 1024,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> MaiImage:
        """Generate one PNG from a text prompt.

        :param prompt: what to draw (non-empty).
        :param width: pixels, >= 768; width * height <= 1,048,576. The service may snap to 16.
        :param height: pixels, >= 768.
        :param model: the deployment name; defaults to the connection's ``deployment`` extra.
        :param extra_params: more JSON fields for newer models (e.g. ``auto_aspect_ratio``); they
            cannot override ``model``, ``prompt``, ``width`` or ``height``.
        """
        request = self.generate_request(
            prompt, width=width, height=height, model=model, extra_params=extra_params
        )
        return self.get_conn().send(request)

    def edit_image(
        self,
        image: ImageSource,
        prompt: str,
        *,
        model: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> MaiImage:
        """Edit an image with a text prompt (MAI-Image-2.5 and 2.5-Flash deployments).

        :param image: PNG or JPEG as bytes, a local path, an fsspec URI (``file://``, ``s3://``,
            ``abfs://``...), an ``ObjectStoragePath``, or the result dict of an upstream MAI task. At
            most the connection's ``max_input_mb`` is read; web URLs only with ``allow_http_inputs``.
        :param prompt: the edit to make (non-empty).
        :param model: the deployment name; defaults to the connection's ``deployment`` extra.
        :param extra_params: more form fields for newer models; ``width``/``height`` here are
            checked against the size rule. They cannot override ``model``, ``prompt`` or ``image``.
        """
        return self.get_conn().send(self.edit_request(image, prompt, model=model, extra_params=extra_params))

    def test_connection(self) -> tuple[bool, str]:
        """Prove endpoint, credentials and deployment without generating an image, in seconds.

        One deliberately undersized generation (16x16), one attempt: the service checks credentials
        and the deployment before the size, so a 400 about the size proves all three and no image is
        made (or billed). Messages are the provider's own: no transport text, which could quote a key.
        """
        try:
            s = self.settings
            deployment = s.deployment or "airflow-connection-test"
            failure = self.get_conn().probe(deployment)
        except MaiError as exc:
            return False, str(exc)
        except Exception as exc:  # the Test button must answer, never raise - and never echo a secret
            return False, f"the test of connection {self.mai_conn_id!r} failed: {type(exc).__name__}"
        if failure is None:
            return True, f"Connected to {s.endpoint}; deployment {deployment!r} answered."
        if failure.status_code == 400:
            return True, f"Connected to {s.endpoint}: credentials accepted, deployment {deployment!r} found."
        if failure.status_code == 404 and not s.deployment:
            return True, (
                f"Connected to {s.endpoint}: credentials accepted. No default deployment is set, "
                "so none was checked (tasks must pass model=...)."
            )
        return False, str(failure)
