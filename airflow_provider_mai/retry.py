"""How long to wait before the next attempt: server hints first, else capped exponential backoff
with full jitter (so workers that failed together do not retry together)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

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
class RetryPolicy:
    """Retry budget and backoff.

    :param max_retries: attempts after the first one (0 disables retries).
    :param base_delay: first backoff step in seconds; doubles with each attempt.
    :param max_delay: ceiling of one backoff step in seconds.
    """

    max_retries: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            hint = min(retry_after, MAX_HONOURED_RETRY_AFTER)
            # A little spread so that workers told the same instant do not arrive together.
            return hint + self.rng() * min(1.0, 0.1 * hint + 0.05)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng() * ceiling
