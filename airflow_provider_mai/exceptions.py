"""The errors the MAI provider raises (the classes only: which answer becomes which error is
decided in :mod:`airflow_provider_mai.client.answers`).

Every error is a :class:`MaiError` (an ``AirflowException``). Errors that cannot succeed on a
rerun - bad input, content filtered, bad credentials, unknown deployment, a redirect - also derive
from ``AirflowFailException``, so Airflow fails the task at once instead of spending task retries
(and quota) on them. Transient failures are retried inside the client; when retries run out,
:class:`MaiTransientError` says how many attempts were made and what the last answer was.

Without Airflow (the client used on its own) the same classes derive from plain exceptions.
"""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # the client used without Airflow: same hierarchy, plain bases

    class AirflowException(Exception):  # type: ignore[no-redef]
        """Stands in for Airflow's base exception when Airflow is not installed."""

    class AirflowFailException(AirflowException):  # type: ignore[no-redef]
        """Stands in for Airflow's no-retry exception when Airflow is not installed."""


class MaiError(AirflowException):
    """Base class of every error raised by the MAI provider.

    :param message: what went wrong and what to fix.
    :param status_code: the HTTP status of the service's answer, or None when no answer applies.
    :param error_code: the ``code`` from the service's error body, when it sent one.
    :param request_id: the service's request id, for support tickets, when known.
    :param attempts: how many HTTP requests were made for this call (0 when none was sent).
    :param possibly_billed: the request reached the service in full before this failure (a
        timeout, a cut-off answer, a 5xx): the service may have made and billed an image.
    :param retry_after: seconds the service asked us to wait before another attempt, if it said.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        attempts: int = 0,
        possibly_billed: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # AirflowException declares an HTTPStatus here (for the REST API); ours is the service's status.
        self.status_code = status_code  # type: ignore[assignment]
        self.error_code = error_code
        self.request_id = request_id
        self.attempts = attempts
        self.possibly_billed = possibly_billed
        self.retry_after = retry_after

    def __str__(self) -> str:
        details = []
        if self.status_code is not None:
            details.append(f"status {self.status_code}")
        if self.error_code:
            details.append(f"code {self.error_code}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.attempts > 1:
            details.append(f"{self.attempts} attempts")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, request_id={self.request_id!r}, attempts={self.attempts!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep errors picklable (Airflow and multiprocessing pickle exceptions) with their fields.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[MaiError], message: str, state: dict[str, Any]) -> MaiError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class MaiPermanentError(MaiError, AirflowFailException):
    """A failure that a retry cannot fix; Airflow fails the task without task retries."""


class MaiValidationError(MaiPermanentError, ValueError):
    """The input breaks a documented rule; nothing was sent to the service."""


class MaiConfigurationError(MaiPermanentError):
    """The Airflow connection is unusable (missing host, clear-text remote endpoint, bad extra)."""


class MaiOutputExistsError(MaiPermanentError):
    """The output location already holds an image and ``if_exists="fail"`` was asked for."""


class MaiBadRequestError(MaiPermanentError):
    """The service answered 400: the request is invalid (size rules, unsupported parameter...)."""


class MaiContentFilterError(MaiBadRequestError):
    """The service's content filter blocked the prompt or the image.

    :param label: the filter label the service gave (e.g. ``MultiSeverity_ViolenceScore``), if any.
    """

    def __init__(self, message: str, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.label = label


class MaiAuthenticationError(MaiPermanentError):
    """The service answered 401 or 403: the key, token or network rules refuse us."""


class MaiNotFoundError(MaiPermanentError):
    """The service answered 404: wrong endpoint or deployment name."""


class MaiTransientError(MaiError):
    """A transient failure (429, 408, 5xx, dropped connection, broken body) that outlasted the retries."""

    retryable = True


class MaiUnfinishedRequestError(MaiTransientError, AirflowFailException):
    """A deferred request that an earlier run of its trigger sent and never finished (a triggerer
    restart, a handover, a killed trigger), not sent again because the connection sets
    ``retry_sent_requests=false``: the service may have made and billed that image.

    A :class:`MaiTransientError` with ``possibly_billed`` set, as the synchronous mode raises for a
    request sent and left unanswered; it fails the task at once (no task retry sends it again).
    """

    retryable = False


class MaiRateLimitError(MaiTransientError):
    """The deployment's requests-per-minute quota was exceeded (429) on every attempt."""


class MaiResponseError(MaiTransientError):
    """The service answered 200 with a body that is not a usable image answer, or broke HTTP."""


class MaiResponseTooLargeError(MaiResponseError):
    """An answer larger than the connection's ``max_response_mb`` (after decompression).

    Not retried: a service that answers with more than any image needs will do it again.
    """

    retryable = False
