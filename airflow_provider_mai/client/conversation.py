"""One call to the service as a conversation of steps, with no I/O: the client's rules, once.

A call is a generator. It yields what must be done - :class:`Pace` (take a send slot), :class:`Send`
(one HTTP exchange), :class:`Wait`, :class:`RefreshToken` - and is sent back what came of it: the
seconds until the slot, the :class:`~airflow_provider_mai.client.transport.Answer` or
:class:`~airflow_provider_mai.client.transport.TransportError`. It returns the
:class:`~airflow_provider_mai.models.MaiImage` or raises the typed error. A driver (the sync
:class:`~airflow_provider_mai.client.core.MaiClient`, or an asyncio one) only performs the steps,
so both run exactly the same rules: request building (:mod:`.rules`), answers and errors
(:mod:`.answers`), retries and waits (:mod:`.retry`), pacing.

    steps = image_call(request, settings, policy, log)
    outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value
        outcome = perform(step)   # sync or async
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import airflow_provider_mai.client.answers as answers
import airflow_provider_mai.client.rules as rules
from airflow_provider_mai.client.transport import Answer, TransportError
from airflow_provider_mai.exceptions import MaiConfigurationError, MaiError

if TYPE_CHECKING:
    from airflow_provider_mai.client.retry import RetryPolicy
    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import ImageRequest, MaiImage


@dataclass(frozen=True)
class Pace:
    """Take the next send slot of ``deployment``'s quota; answer with the seconds until it (or the
    ``PacingStateError`` that stopped it)."""

    deployment: str


@dataclass(frozen=True)
class Send:
    """One HTTP exchange within these bounds; answer with the ``Answer`` or the ``TransportError``.

    :param request: what to send (path and body parts), to the settings' endpoint.
    :param timeout: the deadline for the whole exchange: connect, headers and body.
    :param connect_timeout: seconds for a connection (within ``timeout``).
    :param max_body: the largest 200 body accepted, after decompression.
    :param attempt: which attempt of the call this is (1-based).
    """

    request: rules.HttpRequest
    timeout: float
    connect_timeout: float
    max_body: int
    attempt: int


@dataclass(frozen=True)
class Wait:
    """Wait this many seconds (backoff, a server's hint, or a pacing slot)."""

    seconds: float


@dataclass(frozen=True)
class RefreshToken:
    """Fetch a fresh Entra ID token before the next exchange."""


Step = Pace | Send | Wait | RefreshToken
Call = Generator[Step, Any, Any]


def _send(http: rules.HttpRequest, settings: MaiSettings, attempt: int, *, probe: bool = False) -> Send:
    if probe:
        timeout = min(rules.PROBE_TIMEOUT, settings.timeout)
        connect = min(rules.PROBE_CONNECT_TIMEOUT, settings.connect_timeout)
    else:
        timeout, connect = settings.timeout, settings.connect_timeout
    return Send(http, timeout, connect, settings.max_response_bytes, attempt)


def image_call(
    request: ImageRequest,
    settings: MaiSettings,
    policy: RetryPolicy,
    log: Any = None,
    *,
    token_refreshable: bool = False,
) -> Generator[Step, Any, MaiImage]:
    """The steps of one image request: pace, send, read the answer, retry what can succeed.

    :param request: a validated generation or edit request.
    :param settings: the connection (endpoint, bounds, quota, retry rules).
    :param policy: the retry policy (:meth:`~airflow_provider_mai.client.retry.RetryPolicy.decide`).
    :param log: where retries and pacing are reported.
    :param token_refreshable: the credentials are Entra ID tokens (a 401 earns one fresh token).
    """
    log = log or logging.getLogger(__name__)
    http = rules.encode(request)
    deployment = request.deployment
    attempt = 0
    while True:
        attempt += 1
        if settings.rpm:
            slot = yield Pace(deployment)
            if isinstance(slot, BaseException):
                raise MaiConfigurationError(
                    f"connection {settings.conn_id!r}: {slot}; pacing needs a private folder "
                    "(extra 'rpm_state_dir')"
                ) from None
            if slot > 0:
                log.info(
                    "Pacing deployment %r at %g requests/minute: sending in %.1f s",
                    deployment,
                    settings.rpm,
                    slot,
                )
                yield Wait(slot)
        outcome = yield _send(http, settings, attempt)
        try:
            answer = answers.checked(
                outcome, settings=settings, path=http.path, deployment=deployment, attempt=attempt
            )
            return answers.image(answer, request, attempt)
        except MaiError as failure:
            decision = policy.decide(failure, attempt, token_refreshable=token_refreshable)
            if not decision.retry:
                raise
            if decision.refresh_token:
                token_refreshable = False
                log.warning("MAI answered 401 with an Entra ID token; retrying once with a new token")
                yield RefreshToken()
                continue
            billed = " after the request was sent: the service may have billed it"
            log.warning(
                "MAI %s for deployment %r failed (attempt %d of %d: %s)%s; retrying in %.1f s",
                http.operation,
                deployment,
                attempt,
                policy.max_retries + 1,
                failure.status_code or type(failure).__name__,
                billed if failure.possibly_billed else "",
                decision.wait,
            )
            yield Wait(decision.wait)


def probe_call(deployment: str, settings: MaiSettings) -> Generator[Step, Any, MaiError | None]:
    """The steps of the connection test: one short exchange, never retried.

    Returns the error the service answered with (a 400 about the size is the good outcome: see
    :func:`~airflow_provider_mai.client.rules.probe`), None for a 200; raises :class:`MaiError`
    when nothing usable answered.
    """
    http = rules.probe(deployment)
    outcome: Answer | TransportError = yield _send(http, settings, 1, probe=True)
    try:
        answers.checked(outcome, settings=settings, path=http.path, deployment=deployment, attempt=1)
    except MaiError as failure:
        if failure.status_code is None:
            raise
        return failure
    return None
