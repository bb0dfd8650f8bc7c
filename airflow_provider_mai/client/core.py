"""MaiClient: the one request path to a MAI image deployment, in a worker. No Airflow inside.

Usable on its own (a script, a notebook, another orchestrator)::

    settings = MaiSettings.from_connection("mine", host="https://res.services.ai.azure.com",
                                           password=key, extra={"deployment": "my-mai-image-2-5"})
    client = MaiClient(settings)
    image = client.send(GenerateRequest("a red kite", 1024, 1024, deployment="my-mai-image-2-5"))

The client only performs the steps of a call (:mod:`~airflow_provider_mai.client.conversation`):
pace, send once within the deadline (:mod:`~airflow_provider_mai.client.transport.sync`), wait,
refresh a token. What the answers mean and what is retried is decided there, the same for the
asyncio client the triggerer uses (:class:`~airflow_provider_mai.client.async_core.AsyncMaiClient`,
which shares :class:`StepDriver` with this one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.client.auth import Credentials
from airflow_provider_mai.client.conversation import (
    Call,
    Pace,
    RefreshToken,
    Send,
    Step,
    Wait,
    image_call,
    probe_call,
)
from airflow_provider_mai.client.retry import RetryPolicy

if TYPE_CHECKING:
    import requests
    from azure.core.credentials import TokenCredential

    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.exceptions import MaiError
    from airflow_provider_mai.models import ImageRequest, MaiImage


def retry_policy(settings: MaiSettings) -> RetryPolicy:
    """The retry policy a connection states."""
    return RetryPolicy(
        settings.max_retries,
        settings.retry_base_delay,
        settings.retry_max_delay,
        retry_sent_requests=settings.retry_sent_requests,
    )


class StepDriver:
    """What both drivers share: settings, credentials, retry policy, the calls' steps, the pacers.

    :class:`MaiClient` and :class:`~airflow_provider_mai.client.async_core.AsyncMaiClient` differ only
    in how they perform a step (blocking, or awaited); the steps and every rule behind them are
    built here, once.
    """

    def __init__(
        self,
        settings: MaiSettings,
        *,
        credential: TokenCredential | None = None,
        log: Any = None,
        on_secret: Callable[[str], None] | None = None,
        pacer_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = Credentials(settings, credential=credential, on_secret=on_secret)
        self.retry_policy = retry_policy(settings)
        self.log = log or logging.getLogger(__name__)
        self._pacer_factory = pacer_factory
        self._pacers: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.settings.endpoint!r})"

    @staticmethod
    def user_agent() -> str:
        """The User-Agent both transports send."""
        from airflow_provider_mai import __version__

        return f"airflow-provider-mai/{__version__}"

    def _image_call(self, request: ImageRequest) -> Call:
        return image_call(
            request,
            self.settings,
            self.retry_policy,
            self.log,
            token_refreshable=self.credentials.refreshable,
        )

    def _exchange_arguments(self, step: Send, headers: dict[str, str]) -> dict[str, Any]:
        """The keyword arguments of either transport's ``exchange`` for one Send step."""
        http = step.request
        return {
            "headers": headers,
            "timeout": step.timeout,
            "connect_timeout": step.connect_timeout,
            "max_body": step.max_body,
            "verify": self.settings.ca_bundle or True,
            "json_body": http.json_body,
            "form": http.form,
            "files": http.files,
        }

    def _reserve(self, deployment: str) -> Any:
        """Seconds until ``deployment``'s next send slot, or the PacingStateError that stopped it."""
        from airflow_provider_mai.client.pacing.file_schedule import PacingStateError, RequestPacer

        pacer = self._pacers.get(deployment)
        if pacer is None:
            key = f"{self.settings.endpoint}|{deployment}"
            if self._pacer_factory is not None:
                pacer = self._pacer_factory(key)
            else:
                pacer = RequestPacer(key, self.settings.rpm or 0, self.settings.rpm_state_dir)
            self._pacers[deployment] = pacer
        try:
            return pacer.reserve()
        except PacingStateError as exc:
            return exc


class MaiClient(StepDriver):
    """Sends image requests to one MAI endpoint: auth, pacing, one request path, retries, parsing.

    :param settings: the connection, read and checked (:class:`~.settings.MaiSettings`).
    :param credential: an azure-identity ``TokenCredential`` to use for Entra ID instead of the one
        the settings describe.
    :param sleep: how to wait (backoff, pacing); tests pass a recorder.
    :param log: where retries and pacing are reported (a logger; default this module's).
    :param on_secret: called with every secret the client starts using (e.g. a log masker).
    :param pacer_factory: builds the send-slot schedule of one quota key (``endpoint|deployment``)
        when the settings state ``rpm``: any object with ``reserve() -> seconds to wait``. Default:
        :class:`~airflow_provider_mai.client.pacing.file_schedule.RequestPacer`, a locked file shared
        on this host.
    """

    def __init__(
        self,
        settings: MaiSettings,
        *,
        credential: TokenCredential | None = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Any = None,
        on_secret: Callable[[str], None] | None = None,
        pacer_factory: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__(
            settings, credential=credential, log=log, on_secret=on_secret, pacer_factory=pacer_factory
        )
        self._sleep = sleep

    @cached_property
    def session(self) -> requests.Session:
        """The pooled HTTP session (keep-alive across calls)."""
        from airflow_provider_mai.client.transport.sync import new_session

        return new_session(self.user_agent())

    def close(self) -> None:
        """Close pooled connections."""
        if "session" in self.__dict__:
            self.session.close()

    # -- the public calls -----------------------------------------------------------------------

    def send(self, request: ImageRequest) -> MaiImage:
        """Send a (validated) request, retrying what can succeed; the image, or the mapped error."""
        result: MaiImage = self._drive(self._image_call(request))
        return result

    def probe(self, deployment: str) -> MaiError | None:
        """One quick request that proves endpoint, credentials and deployment without making an image.

        One attempt, at most :data:`~airflow_provider_mai.client.rules.PROBE_TIMEOUT` seconds.
        Returns the error the service answered with (a 400 about the size is the good outcome);
        raises :class:`MaiError` when nothing usable answered.
        """
        result: MaiError | None = self._drive(probe_call(deployment, self.settings))
        return result

    # -- performing the steps -------------------------------------------------------------------

    def _drive(self, steps: Call) -> Any:
        outcome: Any = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return done.value
            outcome = self._perform(step)

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            return self._exchange(step)
        if isinstance(step, Wait):
            self._sleep(step.seconds)
            return None
        if isinstance(step, Pace):
            return self._reserve(step.deployment)
        if isinstance(step, RefreshToken):
            self.credentials.headers(force_refresh=True)
            return None
        raise TypeError(f"unknown step {step!r}")

    def _exchange(self, step: Send) -> Any:
        from airflow_provider_mai.client.transport import TransportError
        from airflow_provider_mai.client.transport.sync import exchange

        try:
            return exchange(
                self.session,
                self.settings.endpoint + step.request.path,
                **self._exchange_arguments(step, self.credentials.headers()),
            )
        except TransportError as exc:
            return exc
