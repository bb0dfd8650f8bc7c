"""Request pacing held in Redis, so that one deployment's quota is shared by every worker host.

:mod:`~airflow_provider_mai.client.pacing.file_schedule` keeps the send-slot schedule in a locked
file: every task of one host shares it, other hosts do not. A Celery deployment already runs a
Redis that every worker reaches; with the connection extra ``rpm_redis_conn_id`` (an Airflow
connection of type ``redis``) the schedule lives there instead: one key per endpoint and
deployment, and every request takes its slot in one atomic step, a small Lua script run by the
server (:mod:`.redis_rules`). The slots are reckoned on the server's clock, so the workers' clocks
need not agree.

The client speaks RESP2, which every Redis since 2.0 answers (redis-py 8 opens with ``HELLO 3``,
which Redis 5 refuses). One reservation - connect, handshake, script and its whole reply - has
one deadline (:data:`~.redis_rules.REDIS_TIMEOUT`) and one byte budget, however the server
drips its bytes.

Pacing never costs an image: when Redis fails (down, slow, a wrong password, a reply that is not a
slot), that is said once in the log, in our words, and requests are paced by this host's file
schedule for a while (:data:`~.redis_rules.RETRY_REDIS_AFTER`), then Redis is asked again. When
that file cannot be used either, requests go out unpaced and the hook's 429 handling (Retry-After,
jittered backoff) absorbs the excess. Waits are bounded (:func:`max_wait_seconds`).

Needs the ``redis`` client (``pip install "airflow-provider-mai[redis]"``, redis-py >= 5) and
Redis >= 5.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_mai.client.pacing.file_schedule import (
    SAFETY_MARGIN,
    PacingStateError,
    RequestPacer,
    max_wait_seconds,
)
from airflow_provider_mai.client.pacing.redis_rules import (
    KEY_PREFIX,
    MAX_EXCHANGE_BYTES,
    REDIS_TIMEOUT,
    RESERVE_SCRIPT,
    RETRY_REDIS_AFTER,
    RedisHealth,
    failure_reason,
    host_schedule_unusable_text,
    outage_text,
    overfull_text,
    parse_reservation,
    public_address,
    recovered_text,
    redis_url,
    server_name,
)
from airflow_provider_mai.exceptions import MaiConfigurationError

if TYPE_CHECKING:
    from airflow_provider_mai.client.settings import MaiSettings

log = logging.getLogger(__name__)


class Pacer(Protocol):
    """What paces a request: ``reserve()`` takes a slot and returns the seconds to wait for it."""

    def reserve(self) -> float: ...


def redis_url_from_connection(conn: Any) -> str:
    """:func:`~.redis_rules.redis_url` from an Airflow connection (``host``, ``port``, ``login``,
    ``password``, extras ``db``, ``ssl``, ``ssl_ca_certs``)."""
    return redis_url(
        conn.host,
        conn.port,
        login=conn.login,
        password=conn.password,
        extra=conn.extra_dejson,
        conn_id=getattr(conn, "conn_id", None),
    )


def undefined_connection(settings: MaiSettings) -> MaiConfigurationError:
    """The error of an ``rpm_redis_conn_id`` that names no connection."""
    return MaiConfigurationError(
        f"connection {settings.conn_id!r}: extra rpm_redis_conn_id names {settings.rpm_redis_conn_id!r}, "
        "which is not defined: create that Redis connection (type redis: host, port, password, extra db)"
    )


def pacer_factory(
    settings: MaiSettings, redis_conn: Any, logger: Any = None
) -> Callable[[str], RedisRequestPacer]:
    """The send-slot schedules of ``settings.rpm`` held in the Redis server ``redis_conn`` (an
    Airflow connection, read by the caller: the hook, or the trigger) - and in this host's file
    schedule while Redis fails. What a client's ``pacer_factory`` takes, for both clients."""
    url = redis_url_from_connection(redis_conn)
    rpm = float(settings.rpm or 0)

    def pacer(key: str) -> RedisRequestPacer:
        return RedisRequestPacer(
            key,
            rpm,
            url,
            fallback=RequestPacer(key, rpm, settings.rpm_state_dir),
            conn_id=settings.rpm_redis_conn_id,
            logger=logger,
        )

    return pacer


class _Budget:
    """The bounds of one reservation: a deadline (monotonic clock) and the bytes it may read.

    Outside a reservation nothing is bounded here (the socket's own timeout applies)."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.bytes_left = math.inf
        #: Why the bounds stopped the exchange, in our words (None: they did not).
        self.verdict: str | None = None
        self._seconds = 0.0

    def start(self, seconds: float, max_bytes: int) -> None:
        self._seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.bytes_left = max_bytes
        self.verdict = None

    def stop(self) -> None:
        self.deadline = self.bytes_left = math.inf

    def remaining(self, requested: float | None) -> float | None:
        """The timeout for the next socket call: what was asked, within the deadline."""
        if self.deadline == math.inf:
            return requested
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.verdict = f"did not answer within {self._seconds:g} s"
            raise TimeoutError("the reservation's deadline passed")
        return left if requested is None else min(requested, left)

    def timed_out(self) -> None:
        """A socket call timed out: say so in our words when it was the deadline that passed."""
        if self.deadline != math.inf and time.monotonic() >= self.deadline:
            self.verdict = f"did not answer within {self._seconds:g} s"

    def spend(self, count: int) -> None:
        self.bytes_left -= count
        if self.bytes_left < 0:
            self.verdict = f"answered more than {MAX_EXCHANGE_BYTES} bytes"
            raise TimeoutError("the reservation's byte budget is spent")  # ends it as a timeout would


class _BudgetedSocket:
    """A connected socket whose every send and read stays within the reservation's budget.

    redis-py times each read alone; a server dripping a byte per second would hold a reply for
    as long as it likes. Here each call's timeout is what is left of one deadline, and the bytes
    read are counted.
    """

    def __init__(self, sock: socket.socket, budget: _Budget) -> None:
        self._sock = sock
        self._budget = budget
        self._timeout = sock.gettimeout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        self._sock.settimeout(self._budget.remaining(self._timeout))
        try:
            return method(*args)
        except TimeoutError:
            self._budget.timed_out()
            raise

    def sendall(self, data: Any, *args: Any) -> None:
        self._call(self._sock.sendall, data, *args)

    def recv(self, size: int, *args: Any) -> bytes:
        data: bytes = self._call(self._sock.recv, size, *args)
        if not args:  # a peek (MSG_PEEK) consumes nothing
            self._budget.spend(len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, *args: Any) -> int:
        count: int = self._call(self._sock.recv_into, buffer, nbytes, *args)
        self._budget.spend(count)
        return count


@cache
def _connection_classes() -> tuple[type, type]:
    """redis-py's TCP and TLS connection classes, their sockets kept within a :class:`_Budget`
    (passed as the connection argument ``budget``). Built on first use: redis is imported lazily."""
    from redis.connection import Connection, SSLConnection

    class _Budgeted:
        def __init__(self, *args: Any, budget: _Budget, **kwargs: Any) -> None:
            self._budget = budget
            super().__init__(*args, **kwargs)

        def _connect(self) -> Any:
            # The connect (and a TLS handshake) is part of the reservation too.
            timeout = self._budget.remaining(self.socket_timeout)  # type: ignore[attr-defined]
            self.socket_connect_timeout = timeout
            return _BudgetedSocket(super()._connect(), self._budget)  # type: ignore[misc]

    class BudgetedConnection(_Budgeted, Connection):
        """A TCP connection within a reservation's budget."""

    class BudgetedSSLConnection(_Budgeted, SSLConnection):
        """A TLS connection within a reservation's budget."""

    return BudgetedConnection, BudgetedSSLConnection


class RedisRequestPacer:
    """The send-slot schedule of one deployment, held in Redis (same interface as
    :class:`~airflow_provider_mai.client.pacing.file_schedule.RequestPacer`).

    :param key: what identifies the quota: the endpoint and the deployment.
    :param rpm: the quota in requests per minute.
    :param redis_url: where the schedule lives, e.g. from :func:`redis_url_from_connection`.
    :param fallback: what paces requests while Redis fails, typically this host's
        :class:`~airflow_provider_mai.client.pacing.file_schedule.RequestPacer` for the same key;
        None (or one whose state is unusable): requests go out unpaced meanwhile.
    :param conn_id: the Redis connection's id, named in log lines.
    :param timeout: seconds for one whole reservation (connect, handshake, script, reply).
    :param clock: monotonic seconds, for the pause after a Redis failure.
    :param logger: where outages are reported (default this module's logger).
    """

    def __init__(
        self,
        key: str,
        rpm: float,
        redis_url: str,
        *,
        fallback: Pacer | None = None,
        conn_id: str | None = None,
        timeout: float = REDIS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        if not (rpm > 0 and math.isfinite(rpm)):
            raise ValueError(f"rpm must be a positive number, got {rpm}")
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
        self.address = public_address(redis_url)
        self.fallback = fallback
        self.timeout = timeout
        self._where = server_name(self.address, conn_id)
        self._clock = clock
        self._log = logger or log
        self._health = RedisHealth(RETRY_REDIS_AFTER)
        #: The last slot taken, in seconds on the Redis server's clock (None before the first, or
        #: when Redis did not answer): what the schedule guarantees is that these are distinct and
        #: at least ``interval`` apart, whatever the clients' clocks say.
        self.last_slot: float | None = None
        self._budget = _Budget()
        plain, tls = _connection_classes()
        self._client = redis.Redis.from_url(
            redis_url,
            connection_class=tls if redis_url.startswith("rediss://") else plain,
            budget=self._budget,
            protocol=2,  # RESP2: every server speaks it; Redis 5 refuses HELLO 3
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one try: the fall-back is ours, and bounded
            decode_responses=False,  # the reply is checked as bytes (parse_reservation)
        )
        self._script = self._client.register_script(RESERVE_SCRIPT)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(key={self.redis_key!r}, interval={self.interval:.3f}, at={self.address!r})"

    def reserve(self) -> float:
        """Take the next free send slot; return the seconds to wait until it (0 when it is now).

        While Redis fails, the fallback's wait (0 without a usable fallback). Never raises for
        anything Redis does.
        """
        if self._health.use_redis(self._clock()):
            try:
                reply = self._ask_redis()
                reservation = parse_reservation(reply, self.max_wait)
            except Exception as exc:  # anything Redis does falls back; its text is never shown
                self._client.connection_pool.disconnect()  # never read a half reply later
                if self._health.failed(self._clock()):  # an outage starts: say so, once
                    reason = failure_reason(exc, self._budget.verdict)
                    host_schedule = self.fallback is not None and self._health.fallback_usable
                    self._log.error("%s", outage_text(self._where, reason, host_schedule=host_schedule))
            else:
                if self._health.answered():
                    self._log.info("%s", recovered_text(self._where))
                self.last_slot = reservation.slot
                if reservation.slot is None:
                    self._log.warning("%s", overfull_text(self.max_wait, reservation.wait))
                return reservation.wait
        self.last_slot = None
        return self._fallback_wait()

    def _ask_redis(self) -> Any:
        self._budget.start(self.timeout, MAX_EXCHANGE_BYTES)
        try:
            return self._script(keys=[self.redis_key], args=[f"{self.interval:.6f}", f"{self.max_wait:.6f}"])
        finally:
            self._budget.stop()

    def _fallback_wait(self) -> float:
        if self.fallback is None or not self._health.fallback_usable:
            return 0.0
        try:
            return self.fallback.reserve()
        except PacingStateError as exc:  # our own words (a path and what is wrong with it)
            if self._health.fallback_failed():
                self._log.warning("%s", host_schedule_unusable_text(self._where, str(exc)))
            return 0.0
