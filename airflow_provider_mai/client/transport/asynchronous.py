"""One HTTP exchange on asyncio (httpx), with the same bounds and outcomes as :mod:`.sync`.

- **A deadline over the whole exchange** (connect, headers and body): ``asyncio.timeout`` around
  all of it, so a server dripping a byte a second cannot hold the call past ``timeout``; the
  connection gets ``connect_timeout`` of it.
- **A cap on the body**: read raw (``aiter_raw``: httpx decodes nothing) through the shared
  :class:`~.body.BodyReader` - announced lengths checked before reading, bounded decompression,
  error answers cut at :data:`~airflow_provider_mai.client.transport.MAX_ERROR_BODY`.
- **No redirects**: a 3xx comes back as an answer, for the caller to refuse.
- **Whether the request went out in full** is recorded (httpcore's ``trace`` events), so a caller
  can tell a failure that may have been billed from one that cannot have been.
- **Errors carry no transport text**: h11 quotes an illegal header value (the API key) in its
  message; :class:`~airflow_provider_mai.client.transport.TransportError` names only what happened.
- **The environment as the sync transport reads it**: httpx's own reading is off (``trust_env=False``:
  no ``~/.netrc``, no ``SSL_CERT_FILE``); proxies and CA bundles come from
  :func:`~airflow_provider_mai.client.transport.environment_route`, shared with :mod:`.sync`.

httpx is imported when the first session is made, never with this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.client.transport import (
    MAX_ERROR_BODY,
    POOL_SIZE,
    Answer,
    TransportError,
    base_headers,
    environment_route,
)
from airflow_provider_mai.client.transport.body import BodyReader, bad_length, ended_early

if TYPE_CHECKING:
    import httpx

#: What building a request raises for values it cannot send (json.dumps refuses NaN, say).
_UNBUILDABLE = (ValueError, TypeError)
#: httpcore's trace event once the whole request (headers and body) has been written.
_SENT_EVENTS = frozenset({"http11.send_request_body.complete", "http2.send_request_body.complete"})


def _ssl_context(cas: str | bool) -> ssl.SSLContext:
    """A verifying TLS context trusting ``cas`` (a file or folder; True: certifi's bundle, as
    requests does). Shared while the bundle is unchanged: loading one costs milliseconds and a few
    hundred KB, and a triggerer runs many clients; a replaced bundle is read again."""
    if cas is True or cas is False:  # False never comes: settings always verify
        import certifi

        cas = certifi.where()
    try:
        info = os.stat(cas)
    except OSError:
        info = None
    return _loaded_context(cas, (info.st_mtime_ns, info.st_size) if info else None)


@functools.lru_cache(maxsize=8)
def _loaded_context(cas: str, stamp: tuple[int, int] | None) -> ssl.SSLContext:
    if os.path.isdir(cas):
        return ssl.create_default_context(capath=cas)
    return ssl.create_default_context(cafile=cas)


class AsyncSession:
    """Pooled httpx clients, one per route (proxy, CA bundle), made on first use.

    Bound to the event loop it is first used on (httpx's pools are); close it with :meth:`aclose`.
    """

    def __init__(self, user_agent: str) -> None:
        self.headers = base_headers(user_agent)
        self._clients: dict[tuple[str | None, str | bool], httpx.AsyncClient] = {}

    def client(self, proxy: str | None, cas: str | bool) -> httpx.AsyncClient:
        """The client for one route (created on first use)."""
        client = self._clients.get((proxy, cas))
        if client is None:
            import httpx

            client = httpx.AsyncClient(
                headers=self.headers,
                verify=_ssl_context(cas),
                proxy=proxy,
                trust_env=False,
                follow_redirects=False,
                # No wait for a pooled connection (as urllib3's non-blocking pool): the deadline is
                # for the service, not for our own queue.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_SIZE),
            )
            self._clients[(proxy, cas)] = client
        return client

    async def aclose(self) -> None:
        """Close every pooled connection."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


def new_session(user_agent: str) -> AsyncSession:
    """A pooled session: no redirects followed, proxies and CA bundles as :mod:`.sync` reads them."""
    return AsyncSession(user_agent)


class _Progress:
    """What one exchange has done so far: the request written in full, the body being read."""

    def __init__(self) -> None:
        self.sent = False
        self.reading = False

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event in _SENT_EVENTS:
            self.sent = True


async def exchange(
    session: AsyncSession,
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
    :class:`TransportError`. The same parameters and outcomes as :func:`.sync.exchange`."""
    import httpx

    progress = _Progress()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connect = min(connect_timeout, timeout)
    try:
        client, request = _build(session, url, method, headers, verify, json_body, form, files)
        request.extensions["timeout"] = httpx.Timeout(timeout, connect=connect).as_dict()
        request.extensions["trace"] = progress.trace
        # wait_for (asyncio.timeout is 3.11+): one deadline over connect, headers and body.
        exchanged = _exchange(client, request, max_body, progress)
        return await asyncio.wait_for(exchanged, max(deadline - loop.time(), 0.0))
    except TransportError:
        raise
    except asyncio.TimeoutError:  # our deadline (before 3.11 not the builtin TimeoutError)
        raise _timed_out(timeout, progress) from None
    except httpx.ConnectTimeout:
        if loop.time() >= deadline:
            raise _timed_out(timeout, progress) from None
        raise TransportError(f"no connection within {connect:g} s", sent=False, kind="connect") from None
    except httpx.TimeoutException:
        raise _timed_out(timeout, progress) from None
    except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol, *_UNBUILDABLE) as exc:
        if progress.sent:  # not the request's: raised while the answer was read
            raise _broken_exchange(exc, progress) from None
        raise TransportError(
            f"the request could not be built ({type(exc).__name__})", sent=False, kind="invalid"
        ) from None
    except (httpx.HTTPError, OSError) as exc:
        raise _broken_exchange(exc, progress) from None


async def _exchange(
    client: httpx.AsyncClient, request: httpx.Request, max_body: int, progress: _Progress
) -> Answer:
    """The exchange itself, within the deadline :func:`exchange` sets around it."""
    response = await client.send(request, stream=True)
    try:
        ok = response.status_code == 200
        progress.reading = True
        reader = BodyReader(response.headers, max_body if ok else MAX_ERROR_BODY, cut_at_limit=not ok)
        async for chunk in response.aiter_raw():
            if reader.feed(chunk):
                break
        body, _complete = reader.finish()
        return Answer(response.status_code, response.headers, body)
    finally:
        # Read to the end, the connection serves the next call; else httpcore closes it (an
        # unfinished HTTP/1.1 answer never goes back to the pool). Also when the deadline cancels.
        with contextlib.suppress(Exception):
            await response.aclose()


def _build(
    session: AsyncSession,
    url: str,
    method: str,
    headers: Mapping[str, str],
    verify: str | bool,
    json_body: Any,
    form: Mapping[str, str] | None,
    files: Mapping[str, tuple[str, bytes, str]] | None,
) -> tuple[httpx.AsyncClient, httpx.Request]:
    """The client of the request's route, and the request built on it."""
    try:
        proxy, cas = environment_route(url, headers, verify)
        client = session.client(proxy, cas)
    except (OSError, ssl.SSLError):  # the CA bundle cannot be read
        raise TransportError("TLS certificate verification failed", sent=False, kind="tls") from None
    except ImportError:  # as requests: a SOCKS proxy without its package (socksio) is a build error
        raise TransportError(
            "the request could not be built (a SOCKS proxy needs the socksio package)",
            sent=False,
            kind="invalid",
        ) from None
    _check_headers(headers)
    content = None
    extra = dict(headers)
    if json_body is not None:
        # The bytes requests sends for json= (ASCII, default separators, no NaN): one wire format.
        content = json.dumps(json_body, allow_nan=False).encode()
        extra["Content-Type"] = "application/json"
    request = client.build_request(
        method,
        url,
        headers=extra,
        content=content,
        data=dict(form) if form is not None else None,
        files=dict(files) if files is not None else None,
    )
    return client, request


def _check_headers(headers: Mapping[str, str]) -> None:
    """Refuse a header requests would refuse (a newline in a key, say) before connecting, as the
    sync transport does: h11 would only refuse it once connected, quoting the value."""
    from requests.exceptions import InvalidHeader
    from requests.utils import check_header_validity

    try:
        for header in headers.items():
            check_header_validity(header)
    except InvalidHeader:
        raise TransportError(
            "the request could not be built (InvalidHeader)", sent=False, kind="invalid"
        ) from None


def _timed_out(timeout: float, progress: _Progress) -> TransportError:
    return TransportError(f"no complete answer within {timeout:g} s", sent=progress.sent, kind="timeout")


def _broken_exchange(exc: BaseException, progress: _Progress) -> TransportError:
    import httpx

    if _caused_by(exc, ssl.SSLError):  # httpx reports a failed verification as a ConnectError
        return TransportError("TLS certificate verification failed", sent=False, kind="tls")
    if isinstance(exc, httpx.ConnectError) and not progress.sent:
        return TransportError("connection refused", sent=False, kind="connect")
    if isinstance(exc, httpx.RemoteProtocolError):
        if progress.reading:  # h11: "peer closed connection without sending complete message body"
            return ended_early()
        if "content-length" in str(exc).lower():  # h11 refuses a Content-Length that is not digits
            return bad_length()
    what = "after the request was sent" if progress.sent else "while sending the request"
    return TransportError(
        f"the connection broke {what} ({type(exc).__name__})", sent=progress.sent, kind="dropped"
    )


def _caused_by(exc: BaseException, *kinds: type[BaseException]) -> bool:
    """Whether ``exc`` or an error it was raised from (at most 10 deep) is one of ``kinds``."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        if isinstance(current, kinds):
            return True
        current = current.__cause__ or current.__context__
    return False
