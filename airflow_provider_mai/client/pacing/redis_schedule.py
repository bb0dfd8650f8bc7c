"""Request pacing held in Redis, so that one deployment's quota is shared by every worker host.

:mod:`~airflow_provider_mai.client.pacing.file_schedule` keeps the send-slot schedule in a locked
file: every task of one host shares it, other hosts do not. A Celery deployment already runs a
Redis that every worker reaches; with the connection extra ``rpm_redis_conn_id`` (an Airflow
connection of type ``redis``) the schedule lives there instead: one key per endpoint and
deployment, and every request takes its slot in one atomic step, a small Lua script run by the
server. The slots are reckoned on the server's clock, so the workers' clocks need not agree.

Pacing never costs an image: when Redis cannot be reached, the error is logged once, requests go
out unpaced for a while (:data:`RETRY_REDIS_AFTER`) and the hook's 429 handling (Retry-After,
jittered backoff) absorbs the excess. Waits are bounded (:func:`max_wait_seconds`): a schedule
that runs further ahead than that is not extended, and the request is sent after the bound.

Needs the ``redis`` client (``pip install "airflow-provider-mai[redis]"``) and Redis >= 5.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_mai.client.pacing.file_schedule import SAFETY_MARGIN, max_wait_seconds
from airflow_provider_mai.exceptions import MaiConfigurationError

log = logging.getLogger(__name__)

#: Prefix of the schedule keys; the rest is a digest of the endpoint and deployment.
KEY_PREFIX = "airflow-provider-mai:slots:"
#: Seconds to wait for Redis to connect or answer; a slower Redis counts as unreachable.
REDIS_TIMEOUT = 2.0
#: After Redis failed, requests go out unpaced for this many seconds before Redis is tried again
#: (so that an unreachable Redis costs one timeout per 30 s, not one per request).
RETRY_REDIS_AFTER = 30.0

# KEYS[1]: the schedule key. ARGV[1]: seconds between slots. ARGV[2]: the longest wait handed out.
# Returns {wait in seconds, 1 if a slot was taken else 0, the slot on the server's clock}, as
# strings (Lua numbers would be truncated to integers on the way back). The key holds the next free
# slot, on the server's clock, and expires a minute after that slot: an idle deployment leaves
# nothing behind.
_RESERVE_SCRIPT = """
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


def redis_url(
    host: str | None,
    port: int | None = None,
    *,
    login: str | None = None,
    password: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A ``redis://`` URL from the fields of an Airflow Redis connection.

    :param host: the server's host name or address (required).
    :param port: the port (default 6379).
    :param login: the ACL user name, if any.
    :param password: the password, if any.
    :param extra: the connection's extras: ``db`` (default 0), ``ssl`` (true for TLS,
        ``rediss://``), ``ssl_ca_certs`` (a CA bundle path for TLS).
    """
    extra = extra or {}
    host = (host or "").strip()
    if not host or "/" in host or "@" in host:
        raise MaiConfigurationError(
            "the Redis connection for pacing needs a plain host name or address, got "
            + ("a host with '@' (not shown)" if "@" in host else repr(host[:200]))
        )
    try:
        db = int(extra.get("db") or 0)
    except (TypeError, ValueError):
        raise MaiConfigurationError(
            f"the Redis connection's extra 'db' must be a number, got {extra.get('db')!r}"
        ) from None
    if db < 0:
        raise MaiConfigurationError(f"the Redis connection's extra 'db' must not be negative, got {db}")
    ssl = str(extra.get("ssl", "")).lower() in ("1", "true", "yes")
    credentials = ""
    if login or password:
        credentials = f"{quote(login or '', safe='')}:{quote(password or '', safe='')}@"
    netloc = f"[{host}]" if ":" in host else host
    query = {"ssl_ca_certs": extra["ssl_ca_certs"]} if ssl and extra.get("ssl_ca_certs") else {}
    url = f"{'rediss' if ssl else 'redis'}://{credentials}{netloc}:{int(port or 6379)}/{db}"
    return f"{url}?{urlencode(query)}" if query else url


def redis_url_from_connection(conn: Any) -> str:
    """:func:`redis_url` from an Airflow connection (``host``, ``port``, ``login``, ``password``,
    extras ``db``, ``ssl``, ``ssl_ca_certs``)."""
    return redis_url(conn.host, conn.port, login=conn.login, password=conn.password, extra=conn.extra_dejson)


def _address(url: str) -> str:
    """The URL without credentials or query, fit for a log line."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1].split('?', 1)[0]}"


class RedisRequestPacer:
    """The send-slot schedule of one deployment, held in Redis (same interface as
    :class:`~airflow_provider_mai.client.pacing.file_schedule.RequestPacer`).

    :param key: what identifies the quota: the endpoint and the deployment.
    :param rpm: the quota in requests per minute.
    :param redis_url: where the schedule lives, e.g. from :func:`redis_url_from_connection`.
    :param timeout: seconds to wait for Redis to connect or answer.
    :param clock: monotonic seconds, for the pause after a Redis failure.
    """

    def __init__(
        self,
        key: str,
        rpm: float,
        redis_url: str,
        *,
        timeout: float = REDIS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise MaiConfigurationError(
                "connection extra rpm_redis_conn_id needs the redis client: "
                'pip install "airflow-provider-mai[redis]"'
            ) from None
        self.interval = 60.0 / rpm * SAFETY_MARGIN
        self.max_wait = max_wait_seconds(rpm)
        self.redis_key = KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:24]
        self.address = _address(redis_url)
        self._clock = clock
        self._unpaced_until: float | None = None
        #: The last slot taken, in seconds on the Redis server's clock (None before the first, or
        #: when Redis did not answer): what the schedule guarantees is that these are distinct and
        #: at least ``interval`` apart, whatever the clients' clocks say.
        self.last_slot: float | None = None
        client = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one try: the fall-back is ours, and bounded
            decode_responses=True,
        )
        self._script = client.register_script(_RESERVE_SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(key={self.redis_key!r}, interval={self.interval:.3f}, at={self.address!r})"

    def reserve(self) -> float:
        """Take the next free send slot; return the seconds to wait until it (0 when it is now).

        0 as well while Redis is unreachable (the request goes out unpaced).
        """
        if self._unpaced_until is not None and self._clock() < self._unpaced_until:
            return 0.0
        try:
            wait_text, taken, slot_text = self._script(
                keys=[self.redis_key], args=[self.interval, self.max_wait]
            )
            wait = float(wait_text)
            self.last_slot = float(slot_text) if taken == "1" else None
        except self._errors as exc:
            if self._unpaced_until is None:
                log.error(
                    "Redis pacing unavailable at %s (%s: %s): sending without pacing for %.0f s; "
                    "429 answers are retried as usual",
                    self.address,
                    type(exc).__name__,
                    str(exc)[:200],
                    RETRY_REDIS_AFTER,
                )
            self._unpaced_until = self._clock() + RETRY_REDIS_AFTER
            return 0.0
        if self._unpaced_until is not None:
            log.info("Redis pacing at %s is back", self.address)
            self._unpaced_until = None
        if taken != "1":
            log.warning(
                "The send-slot schedule runs more than %.0f s ahead: more requests wait for this "
                "deployment than its quota serves in that time (size the pool: slots = latency x "
                "rpm / 60). Sending after %.0f s without a slot",
                self.max_wait,
                wait,
            )
        return max(0.0, min(wait, self.max_wait))
