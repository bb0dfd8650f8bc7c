"""Which failures are retried, and after how long: the one answer, for both transports.

- **Retried**: 429 (after the wait the service asks for), 408, 5xx, and an exchange that broke or
  timed out - each a :class:`~airflow_provider_mai.exceptions.MaiTransientError`. A 401 with an Entra
  ID token is retried once, with a fresh token.
- **Never retried**: anything that cannot succeed on a resend - a bad request (400), content
  filtered, bad credentials (401 with an API key, 403), a wrong deployment (404), a redirect, an
  answer over the size cap.
- **Possibly billed** failures (the service had the whole request) are retried only while the
  connection allows it (``retry_sent_requests``, default true).
- **How long**: the server's hint first (``retry-after-ms``, then ``Retry-After`` in seconds or as an
  HTTP date; believed up to :data:`MAX_HONOURED_RETRY_AFTER`), else capped exponential backoff with
  full jitter, so workers that failed together do not retry together.

No I/O: :meth:`RetryPolicy.decide` returns a :class:`Decision`; the client carries it out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_mai.exceptions import MaiError

#: Statuses worth another attempt.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses whose ``Retry-After`` / ``retry-after-ms`` is read (urllib3 reads it for the same two).
RETRY_AFTER_STATUSES = frozenset({429, 503})
#: A server hint longer than this is not believed (a broken clock or a far-future HTTP date).
MAX_HONOURED_RETRY_AFTER = 300.0


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms`` first, then ``Retry-After`` (seconds or
    an HTTP date). None when neither is present or readable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt.

    :param retry: send again (else raise the failure).
    :param wait: seconds to wait first.
    :param refresh_token: fetch a fresh Entra ID token first (and do not wait).
    """

    retry: bool
    wait: float = 0.0
    refresh_token: bool = False


GIVE_UP = Decision(retry=False)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry budget and backoff.

    :param max_retries: attempts after the first one (0 disables retries).
    :param base_delay: first backoff step in seconds; doubles with each attempt.
    :param max_delay: ceiling of one backoff step in seconds.
    :param retry_sent_requests: retry a failure after the service had the whole request (it may
        have made and billed an image).
    :param rng: a uniform random number in [0, 1) (tests pass a fixed one).
    """

    max_retries: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    retry_sent_requests: bool = True
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            hint = min(retry_after, MAX_HONOURED_RETRY_AFTER)
            # A little spread so that workers told the same instant do not arrive together.
            return hint + self.rng() * min(1.0, 0.1 * hint + 0.05)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng() * ceiling

    def decide(self, failure: MaiError, attempt: int, *, token_refreshable: bool = False) -> Decision:
        """What to do after ``failure`` ended attempt number ``attempt`` (1-based).

        :param token_refreshable: the request carried an Entra ID token that has not been renewed
            for this call yet (a 401 then earns one retry with a fresh token).

        A failure that is not retried because the connection forbids resending may have been
        billed: its message says so.
        """
        if failure.status_code == 401 and token_refreshable:
            # The cached token may have been revoked or expired early: fetch one fresh token once.
            return Decision(retry=True, refresh_token=True)
        if not failure.retryable or attempt > self.max_retries:
            return GIVE_UP
        if failure.possibly_billed and not self.retry_sent_requests:
            failure.message += (
                " The request had reached the service, which may have made (and billed) the image: "
                "not retried because the connection sets retry_sent_requests=false."
            )
            return GIVE_UP
        return Decision(retry=True, wait=self.delay(attempt, failure.retry_after))
