"""AsyncMaiClient: the same request path as :class:`~.core.MaiClient`, on asyncio (the triggerer).

Many requests wait on one event loop instead of one worker slot each::

    async with AsyncMaiClient(settings) as client:
        image = await client.send(GenerateRequest("a red kite", 1024, 1024, deployment="mai-image-2"))

It performs the very steps :class:`~.core.MaiClient` performs (:mod:`~.conversation`: the requests,
answers, errors and retries are decided there, once); only how a step is done differs:

- **Send**: :mod:`~.transport.asynchronous` (httpx), with the sync transport's bounds and outcomes.
- **Wait**: awaited (``sleep``, default ``asyncio.sleep``).
- **Pace**: the same pacers as the sync client - the file schedule, or Redis with its whole-reply
  deadline and its fallback to the file - run in a thread (``asyncio.to_thread``), so there is ONE
  set of pacing rules; a slot taken there is awaited here, not slept in the thread.
- **Auth**: an API key is read in place; an Entra ID token comes from the same cached
  :class:`~.auth.Credentials` (azure-identity's sync credential), fetched in a thread so a token
  request never blocks the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.client.conversation import Call, Pace, RefreshToken, Send, Step, Wait, probe_call
from airflow_provider_mai.client.core import StepDriver

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.client.transport.asynchronous import AsyncSession
    from airflow_provider_mai.exceptions import MaiError
    from airflow_provider_mai.models import ImageRequest, MaiImage


class AsyncMaiClient(StepDriver):
    """Sends image requests to one MAI endpoint from asyncio: the rules of :class:`~.core.MaiClient`.

    :param settings: the connection, read and checked (:class:`~.settings.MaiSettings`).
    :param credential: an azure-identity (sync) ``TokenCredential`` to use for Entra ID instead of
        the one the settings describe; its ``get_token`` runs in a thread.
    :param sleep: how to wait (backoff, pacing): an awaitable function; tests pass a recorder.
    :param log: where retries and pacing are reported (a logger; default the core module's).
    :param on_secret: called with every secret the client starts using (e.g. a log masker); from a
        thread when it is a new token.
    :param pacer_factory: as for :class:`~.core.MaiClient` (its ``reserve()`` runs in a thread).

    Use one client on one event loop (httpx's pools are bound to it); close it with :meth:`aclose`
    or ``async with``.
    """

    def __init__(
        self,
        settings: MaiSettings,
        *,
        credential: TokenCredential | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        log: Any = None,
        on_secret: Callable[[str], None] | None = None,
        pacer_factory: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__(
            settings, credential=credential, log=log, on_secret=on_secret, pacer_factory=pacer_factory
        )
        self._sleep = sleep
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> AsyncMaiClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def session(self) -> AsyncSession:
        """The pooled HTTP session (keep-alive across calls), made on first use."""
        if self._session is None:
            from airflow_provider_mai.client.transport.asynchronous import new_session

            self._session = new_session(self.user_agent())
        return self._session

    async def aclose(self) -> None:
        """Close pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.aclose()

    # -- the public calls -----------------------------------------------------------------------

    async def send(self, request: ImageRequest) -> MaiImage:
        """Send a (validated) request, retrying what can succeed; the image, or the mapped error."""
        result: MaiImage = await self._drive(self._image_call(request))
        return result

    async def probe(self, deployment: str) -> MaiError | None:
        """The connection test of :meth:`.core.MaiClient.probe`: one short exchange, never retried."""
        result: MaiError | None = await self._drive(probe_call(deployment, self.settings))
        return result

    # -- performing the steps -------------------------------------------------------------------

    async def _drive(self, steps: Call) -> Any:
        outcome: Any = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                return done.value
            outcome = await self._perform(step)

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            return await self._exchange(step)
        if isinstance(step, Wait):
            await self._sleep(step.seconds)
            return None
        if isinstance(step, Pace):
            return await asyncio.to_thread(self._reserve, step.deployment)
        if isinstance(step, RefreshToken):
            await asyncio.to_thread(self.credentials.headers, force_refresh=True)
            return None
        raise TypeError(f"unknown step {step!r}")

    async def _exchange(self, step: Send) -> Any:
        from airflow_provider_mai.client.transport import TransportError
        from airflow_provider_mai.client.transport.asynchronous import exchange

        if self.credentials.refreshable:  # a token may need fetching: never on the loop
            headers = await asyncio.to_thread(self.credentials.headers)
        else:
            headers = self.credentials.headers()
        try:
            return await exchange(
                self.session,
                self.settings.endpoint + step.request.path,
                **self._exchange_arguments(step, headers),
            )
        except TransportError as exc:
            return exc
