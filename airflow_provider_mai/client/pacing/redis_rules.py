"""The rules of Redis-held pacing, with no I/O: the script, what a reply may be, what a failure is
called, and when to ask Redis again. The sync pacer (:mod:`.redis_schedule`) performs them with
redis-py; an asyncio twin performs the same rules with ``redis.asyncio``.

- :data:`RESERVE_SCRIPT` - the one atomic step the server runs to hand out a slot.
- :func:`parse_reservation` - a reply checked to be exactly what the script returns, else
  :class:`BrokenReply` (a wrong type, a nested list, a number out of range).
- :func:`describe_failure` - our own words for a failed exchange. A server's error text is never
  shown: Redis 5 quotes the arguments of a command it does not know, ``AUTH <password>`` included.
- :class:`RedisHealth` - whether to ask Redis now, whether the host's schedule still serves as the
  fallback, and when an outage starts or ends (to be said once each); the log lines' texts.
- :func:`redis_url`, :func:`public_address` - the server's URL from an Airflow connection, and the
  same without credentials for a log line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_mai.exceptions import MaiConfigurationError

#: Prefix of the schedule keys; the rest is a digest of the endpoint and deployment.
KEY_PREFIX = "airflow-provider-mai:slots:"
#: Seconds for one whole reservation - connect, handshake, the script and its whole reply. A Redis
#: slower than that (or one that trickles its reply) counts as unreachable.
REDIS_TIMEOUT = 2.0
#: Bytes one reservation may read in all (handshake answers included); a real one reads ~100.
MAX_EXCHANGE_BYTES = 16 * 1024
#: After Redis failed, requests are paced by this host's schedule for this many seconds before Redis
#: is asked again (so an unreachable Redis costs one timeout per 30 s, not one per request).
RETRY_REDIS_AFTER = 30.0
#: The longest text of one field of the script's reply (``%.6f`` of a Unix time is 17 characters).
_MAX_FIELD_CHARS = 32

# KEYS[1]: the schedule key. ARGV[1]: seconds between slots. ARGV[2]: the longest wait handed out.
# Returns {wait in seconds, 1 if a slot was taken else 0, the slot on the server's clock}, as
# strings (Lua numbers would be truncated to integers on the way back). The key holds the next free
# slot, on the server's clock, and expires a minute after that slot: an idle deployment leaves
# nothing behind. Redis >= 5 runs scripts as effects (TIME before a write is allowed).
RESERVE_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local next_free = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local slot = math.max(now, next_free)
if slot - now > max_wait then
  return {string.format('%.6f', max_wait), '0', string.format('%.6f', now + max_wait)}
end
local ttl_ms = math.ceil((slot + interval - now + 60) * 1000)
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', ttl_ms)
return {string.format('%.6f', slot - now), '1', string.format('%.6f', slot)}
"""


class BrokenReply(ValueError):
    """Redis answered something that is not what :data:`RESERVE_SCRIPT` returns."""


@dataclass(frozen=True)
class Reservation:
    """A reply of :data:`RESERVE_SCRIPT`, checked.

    :param wait: seconds until the slot (0 when it is now), at most the schedule's bound.
    :param slot: the slot taken, in seconds on the server's clock; None when the schedule ran
        further ahead than the bound and no slot was taken (the request goes after the bound).
    """

    wait: float
    slot: float | None


def _field(value: object) -> str:
    if isinstance(value, bytes):
        if len(value) > _MAX_FIELD_CHARS or not value.isascii():
            raise BrokenReply("a field of the reply is not a short ASCII text")
        return value.decode("ascii")
    if isinstance(value, str) and len(value) <= _MAX_FIELD_CHARS and value.isascii():
        return value
    raise BrokenReply(f"a field of the reply is a {type(value).__name__}, not a text")


def _number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise BrokenReply("a field of the reply is not a number") from None
    if not math.isfinite(number):
        raise BrokenReply("a field of the reply is not a finite number")
    return number


def parse_reservation(reply: object, max_wait: float) -> Reservation:
    """The reservation in ``reply`` (three texts: wait, taken, slot); :class:`BrokenReply` for
    anything else - another type, another length, a nested list, a wait outside [0, ``max_wait``]."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 3:
        shape = f"a list of {len(reply)}" if isinstance(reply, (list, tuple)) else type(reply).__name__
        raise BrokenReply(f"the reply is {shape}, not a list of three texts")
    wait_text, taken, slot_text = (_field(item) for item in reply)
    wait, slot = _number(wait_text), _number(slot_text)
    # The script formats to the microsecond: allow that rounding, nothing more.
    if not -1e-6 <= wait <= max_wait + 1e-6:
        raise BrokenReply("the reply's wait is outside the schedule's bound")
    if taken not in ("0", "1") or slot <= 0:
        raise BrokenReply("the reply does not say whether a slot was taken")
    return Reservation(wait=min(max(wait, 0.0), max_wait), slot=slot if taken == "1" else None)


#: Our words for a failure, by the name of its class or a base class (redis-py and redis.asyncio
#: share these names; the Python built-ins come last). First match in the class's MRO wins.
_FAILURE_WORDS = {
    "BrokenReply": "answered something that is not a send slot",
    "AuthenticationWrongNumberOfArgsError": "refused the credentials",
    "AuthenticationError": "refused the credentials",
    "NoPermissionError": "refused the command (ACL)",
    "BusyLoadingError": "is loading its data",
    "ReadOnlyError": "is a read-only replica",
    "ResponseError": "answered with an error",
    "TimeoutError": "did not answer in time",
    "ConnectionError": "could not be reached",
    "InvalidResponse": "answered something that is not Redis's protocol",
    "RedisError": "failed",
    "UnicodeError": "answered text that is not UTF-8",
    "RecursionError": "answered a reply nested too deep",
    "OSError": "could not be reached",
}


def describe_failure(exc: BaseException) -> str:
    """Our words for a failed exchange, from the exception's class (its text is never used: a
    server's error text can quote a password)."""
    for cls in type(exc).__mro__:
        words = _FAILURE_WORDS.get(cls.__name__)
        if words:
            return words
    return "failed"


def failure_reason(exc: BaseException, verdict: str | None = None) -> str:
    """What a log line says happened: the exchange's own bounds' ``verdict`` when they stopped it
    ("did not answer within 2 s"), else :func:`describe_failure` and the class."""
    return verdict or f"{describe_failure(exc)} ({type(exc).__name__})"


class RedisHealth:
    """When Redis is asked, and when an outage starts and ends - the fallback decision, no I/O.

    After a failure, Redis is left alone for ``retry_after`` seconds (the caller paces on its
    fallback meanwhile) and then asked again. :meth:`failed` and :meth:`answered` return True only
    at the first failure of an outage and at its end, so each is said once in the log.

    :param retry_after: seconds to leave Redis alone after a failure.
    """

    def __init__(self, retry_after: float = RETRY_REDIS_AFTER) -> None:
        self.retry_after = retry_after
        #: The clock time after which Redis is asked again; None while Redis answers.
        self.retry_at: float | None = None
        #: Whether the fallback (this host's schedule) still paces; False once it failed, until
        #: Redis answers again.
        self.fallback_usable = True
        self._outage = False

    def use_redis(self, now: float) -> bool:
        """Whether to ask Redis for this request (False: pace on the fallback)."""
        return self.retry_at is None or now >= self.retry_at

    def failed(self, now: float) -> bool:
        """Record a failure at ``now``; True when it starts an outage (say so)."""
        self.retry_at = now + self.retry_after
        started, self._outage = not self._outage, True
        return started

    def answered(self) -> bool:
        """Record a good reply; True when it ends an outage (say so)."""
        ended, self._outage = self._outage, False
        self.retry_at = None
        self.fallback_usable = True
        return ended

    def fallback_failed(self) -> bool:
        """Record that the fallback cannot pace; True the first time in an outage (say so)."""
        first, self.fallback_usable = self.fallback_usable, False
        return first


def server_name(address: str, conn_id: str | None) -> str:
    """How log lines name the server: its connection id and address, never its credentials."""
    return f"Redis connection {conn_id!r} ({address})" if conn_id else f"Redis at {address}"


def outage_text(where: str, reason: str, *, host_schedule: bool) -> str:
    """The one error line of an outage."""
    instead = "Pacing by this host's own schedule" if host_schedule else "Sending without pacing"
    return (
        f"Pacing through {where} is unavailable: Redis {reason}. {instead} for {RETRY_REDIS_AFTER:.0f} s, "
        "then Redis is asked again; other hosts pace on their own meanwhile, and 429 answers are "
        "retried as usual"
    )


def host_schedule_unusable_text(where: str, problem: str) -> str:
    """The warning when the fallback cannot pace either (``problem``: our own words, a path)."""
    return (
        f"This host's pacing schedule cannot be used either ({problem}): sending without pacing "
        f"until {where} answers"
    )


def recovered_text(where: str) -> str:
    """The line that ends an outage."""
    return f"{where} answers again: pacing through Redis"


def overfull_text(max_wait: float, wait: float) -> str:
    """The warning when the schedule runs further ahead than the bound (no slot taken)."""
    return (
        f"The send-slot schedule runs more than {max_wait:.0f} s ahead: more requests wait for this "
        "deployment than its quota serves in that time (size the pool: slots = latency x rpm / 60). "
        f"Sending after {wait:.0f} s without a slot"
    )


def redis_url(
    host: str | None,
    port: int | None = None,
    *,
    login: str | None = None,
    password: str | None = None,
    extra: Mapping[str, Any] | None = None,
    conn_id: str | None = None,
) -> str:
    """A ``redis://`` URL from the fields of an Airflow Redis connection.

    :param host: the server's host name or address (required).
    :param port: the port (default 6379).
    :param login: the ACL user name, if any.
    :param password: the password, if any.
    :param extra: the connection's extras: ``db`` (default 0), ``ssl`` (true for TLS,
        ``rediss://``), ``ssl_ca_certs`` (a CA bundle path for TLS).
    :param conn_id: the Redis connection's id, named in errors.
    """
    extra = extra or {}
    which = f"the Redis connection {conn_id!r}" if conn_id else "the Redis connection"
    host = (host or "").strip()
    if not host or "/" in host or "@" in host:
        raise MaiConfigurationError(
            f"{which} for pacing needs a plain host name or address, got "
            + ("a host with '@' (not shown)" if "@" in host else repr(host[:200]))
        )
    try:
        db = int(extra.get("db") or 0)
    except (TypeError, ValueError):
        raise MaiConfigurationError(
            f"{which}: extra 'db' must be a number, got {str(extra.get('db'))[:50]!r}"
        ) from None
    if db < 0:
        raise MaiConfigurationError(f"{which}: extra 'db' must not be negative, got {db}")
    ssl = str(extra.get("ssl", "")).lower() in ("1", "true", "yes")
    credentials = ""
    if login or password:
        credentials = f"{quote(login or '', safe='')}:{quote(password or '', safe='')}@"
    netloc = f"[{host}]" if ":" in host else host
    query = {"ssl_ca_certs": extra["ssl_ca_certs"]} if ssl and extra.get("ssl_ca_certs") else {}
    url = f"{'rediss' if ssl else 'redis'}://{credentials}{netloc}:{int(port or 6379)}/{db}"
    return f"{url}?{urlencode(query)}" if query else url


def public_address(url: str) -> str:
    """``url`` without credentials or query, fit for a log line."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1].split('?', 1)[0]}"
