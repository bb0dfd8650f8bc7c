"""One HTTP exchange with bounds we chose: a deadline, a body cap, no redirects, no leaked text.

- **A deadline over the whole exchange** (connect, headers and body), not per socket read: a watchdog
  thread shuts the connection's socket down when it passes, so a server dripping a byte a second
  cannot hold a worker past ``timeout``.
- **A cap on the body**, checked before allocating (a lying ``Content-Length``), while reading (no
  length), and on the decompressed size (we decompress gzip/deflate ourselves, in bounded steps).
- **No redirects**: a 3xx comes back as an answer (its body bounded like any error's), for the
  caller to refuse.
- **Whether the request went out in full** is recorded, so a caller can tell a failure that may
  have been billed (the service had the whole request) from one that cannot have been.
- **Errors carry no transport text**: exception messages of the HTTP stack can quote header values
  (the API key); :class:`TransportError` names only what happened.

No Airflow and no MAI semantics here: :mod:`airflow_provider_mai.client.answers` gives the answers
meaning; :mod:`.body` holds the body rules this transport shares with the async one.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from airflow_provider_mai.client.transport import (
    MAX_ERROR_BODY,
    POOL_SIZE,
    READ_CHUNK,
    Answer,
    TransportError,
    base_headers,
    environment_route,
)
from airflow_provider_mai.client.transport.body import BodyReader, cut_off, ended_early

_current = threading.local()


class _Attempt:
    """One exchange as its connection sees it: the socket to cut at the deadline, whether the
    request went out in full. Published to the connection classes through a thread-local.

    The deadline is enforced twice over: the watchdog cuts the socket when it passes (waking a
    blocked read), and every step - a finished connect, a request about to be sent, each read of the
    body - checks it, for the moments the watchdog finds no socket to cut (slow name resolution, a
    TLS handshake before the request).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.sent = False
        self.expired = False
        self.done = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()

    def bind(self, connection: HTTPConnection) -> None:
        """Remember the connection in use; refuse to go on when the deadline has passed."""
        with self._lock:
            self._connection = connection
        self.check()

    def check(self) -> None:
        """Raise ``TimeoutError`` (and cut the connection) once the deadline has passed."""
        if self.expired or time.monotonic() >= self.deadline:
            self.expire()
            raise TimeoutError("the exchange's deadline passed")

    def expire(self) -> None:
        """The deadline passed: cut the connection, unless the exchange already finished."""
        with self._lock:
            if self.done:
                return
            self.expired = True
            sock = getattr(self._connection, "sock", None)
            if sock is not None:
                # The plain socket's shutdown, also for TLS: it wakes a blocked read at once.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def timed_out(self) -> TransportError:
        return TransportError(f"no complete answer within {self.seconds:g} s", sent=self.sent, kind="timeout")

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._connection = None  # the watchdog may keep the attempt a while; never the connection


class _Watchdog:
    """One daemon thread per process that expires attempts at their deadlines.

    Cheaper than a timer thread per attempt (starting one costs ~0.6 ms). Finished attempts leave
    the queue when their deadline comes up, or when the queue is compacted (it never holds more than
    :data:`_COMPACT_AT` finished ones). Restarted in a forked child, which inherits the state but not
    the thread.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pending: list[tuple[float, int, _Attempt]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._count = 0

    def watch(self, attempt: _Attempt) -> None:
        with self._wake:
            if len(self._pending) >= _COMPACT_AT:
                self._pending = [entry for entry in self._pending if not entry[2].done]
                heapq.heapify(self._pending)
            self._count += 1
            heapq.heappush(self._pending, (attempt.deadline, self._count, attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mai-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending or self._pending[0][0] > time.monotonic():
                    self._wake.wait(self._pending[0][0] - time.monotonic() if self._pending else None)
                _, _, attempt = heapq.heappop(self._pending)
            attempt.expire()


#: The watchdog's queue is cleared of finished attempts when it reaches this length.
_COMPACT_AT = 256
_WATCHDOG = _Watchdog()


class _WatchedConnection:
    """Mixed into urllib3's connections: the current attempt learns which connection it uses (to cut
    it), whether the request went out in full, and each step checks the attempt's deadline."""

    def connect(self) -> None:
        attempt: _Attempt | None = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.bind(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]
        if attempt is not None:
            attempt.check()  # name resolution and TLS may have taken the rest of the time

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt: _Attempt | None = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.bind(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]
        if attempt is not None:
            attempt.sent = True


class _HTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """Pools connections (retries are the client's, so urllib3 makes none) with watched connections."""

    def __init__(self) -> None:
        super().__init__(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # SOCKS managers bring their own pools
            manager.pool_classes_by_scheme = _POOLS
        return manager


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit (empty) auth, so requests never adds credentials from ``~/.netrc``."""
    return request


def new_session(user_agent: str) -> requests.Session:
    """A pooled session: watched connections, no redirects followed, proxies from the environment."""
    session = requests.Session()
    adapter = _Adapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update(base_headers(user_agent))
    return session


def exchange(
    session: requests.Session,
    url: str,
    *,
    method: str = "POST",
    headers: Mapping[str, str],
    timeout: float,
    connect_timeout: float,
    max_body: int,
    verify: str | bool = True,
    json_body: Any = None,
    form: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
) -> Answer:
    """Send once (a POST by default) and read the whole answer within ``timeout`` seconds; raise
    :class:`TransportError`.

    :param verify: a CA bundle path, or True. Passed with the request, so it wins over
        ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (requests lets those override ``session.verify``).
    :param max_body: the largest 200 body accepted, after decompression. Error answers are read up
        to :data:`MAX_ERROR_BODY` bytes and cut there.
    """
    attempt = _Attempt(timeout)
    _current.attempt = attempt
    _WATCHDOG.watch(attempt)
    response: requests.Response | None = None
    complete = False
    try:
        # Straight to the adapter: Session.send would read a redirect's whole body (unbounded) to
        # offer the next hop; we follow none. Environment proxies and CA settings still apply.
        prepared = session.prepare_request(
            requests.Request(
                method, url, headers=dict(headers), json=json_body, data=form, files=files, auth=_no_netrc
            )
        )
        target = prepared.url or url
        proxy, cas = environment_route(target, headers, verify)
        response = session.get_adapter(target).send(
            prepared,
            stream=True,
            timeout=(min(connect_timeout, timeout), timeout),
            verify=cas,
            proxies={"all": proxy} if proxy else {},
        )
        ok = response.status_code == 200
        body, complete = _read_body(
            response, attempt, max_body if ok else MAX_ERROR_BODY, cut_at_limit=not ok
        )
        return Answer(response.status_code, response.headers, body)
    except TransportError:
        raise
    except requests.exceptions.SSLError:
        raise TransportError("TLS certificate verification failed", sent=False, kind="tls") from None
    except (
        requests.exceptions.InvalidJSONError,
        requests.exceptions.InvalidHeader,
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
    ) as exc:
        raise TransportError(
            f"the request could not be built ({type(exc).__name__})", sent=False, kind="invalid"
        ) from None
    except requests.exceptions.ConnectTimeout:
        if attempt.expired:
            raise attempt.timed_out() from None
        raise TransportError(
            f"no connection within {min(connect_timeout, timeout):g} s", sent=False, kind="connect"
        ) from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _broken_exchange(exc, attempt) from None
    finally:
        attempt.finish()
        _current.attempt = None
        if response is not None:
            if complete and not attempt.expired:
                response.raw.release_conn()  # read to the end: the connection can serve the next call
            else:
                response.close()  # unread or broken: the connection is closed, never reused


def _broken_exchange(exc: BaseException, attempt: _Attempt) -> TransportError:
    if attempt.expired or isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
        return attempt.timed_out()
    if not attempt.sent and _caused_by(exc, urllib3.exceptions.NewConnectionError):
        return TransportError("connection refused", sent=False, kind="connect")
    if _caused_by(exc, http.client.IncompleteRead, urllib3.exceptions.IncompleteRead):
        return ended_early()
    what = "after the request was sent" if attempt.sent else "while sending the request"
    return TransportError(
        f"the connection broke {what} ({type(exc).__name__})", sent=attempt.sent, kind="dropped"
    )


def _caused_by(exc: BaseException, *kinds: type[BaseException]) -> bool:
    """Whether ``exc`` or what it wraps (urllib3 and requests nest their causes) is one of ``kinds``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        reason = getattr(current, "reason", None)
        inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = reason if isinstance(reason, BaseException) else inner or current.__context__
    return False


def _read_body(
    response: requests.Response, attempt: _Attempt, limit: int, *, cut_at_limit: bool
) -> tuple[bytes | bytearray, bool]:
    """The body, at most ``limit`` bytes once decompressed (or cut there, for error answers), and
    whether it was read to its end.

    With a known length and no encoding it is read in place into one buffer allocated after the
    length was checked: no list of chunks joined into a second copy.
    """
    raw = response.raw
    reader = BodyReader(response.headers, limit, cut_at_limit=cut_at_limit)
    size = reader.fixed_size
    if size is not None:
        body = bytearray(size)
        view = memoryview(body)
        filled = 0
        try:
            while filled < size:
                attempt.check()
                count = raw.readinto(view[filled : filled + READ_CHUNK])
                if not count:
                    break
                filled += count
        finally:
            view.release()
        if filled < size:
            if attempt.expired:
                raise TransportError(
                    "the answer did not arrive within the deadline", sent=True, kind="timeout"
                )
            raise cut_off(filled, reader.length or 0)
        return body, filled == reader.length
    while True:
        attempt.check()
        chunk = raw.read(READ_CHUNK, decode_content=False)
        if not chunk or reader.feed(chunk):
            break
    if attempt.expired:
        raise attempt.timed_out()
    return reader.finish()
