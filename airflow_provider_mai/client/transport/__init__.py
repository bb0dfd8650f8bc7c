"""How bytes move: one HTTP exchange within bounds we chose, by either of two transports.

- :mod:`.sync` - requests/urllib3, for workers (one thread per request, a deadline watchdog).
- :mod:`.asynchronous` - httpx on asyncio, for the triggerer (many exchanges on one event loop).
- :mod:`.body` - what both share: the answer's body read within its cap (announced lengths checked
  before allocating, bounded decompression), with no I/O of its own.

Both read the environment the same way, here (:func:`environment_route`): proxies and CA bundles as
requests reads them, never ``~/.netrc``, and never a proxy for a credential over plain http.

A transport only moves bytes: what an answer means is :mod:`airflow_provider_mai.client.answers`'
job. Importing this package loads no HTTP library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Bytes read from the socket at a time.
READ_CHUNK = 1 << 20
#: Error answers are read up to this many bytes: enough for any message worth quoting.
MAX_ERROR_BODY = 64 * 1024
#: Encodings we can decompress with a bound (brotli or zstd are never asked for).
ACCEPT_ENCODING = "gzip, deflate"
#: Idle connections kept per endpoint for the next call (more may be open at once; none wait for one).
POOL_SIZE = 16


def base_headers(user_agent: str) -> dict[str, str]:
    """The headers every exchange carries, whichever transport sends it."""
    return {"User-Agent": user_agent, "Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}


_CREDENTIAL_HEADERS = frozenset({"api-key", "authorization"})


def key_in_clear_text(url: str, headers: Mapping[str, str]) -> bool:
    """A credential over plain http (accepted for loopback endpoints only, see settings): it goes
    straight to the endpoint, never through an environment proxy that would read it. Keyless plain
    http (an opted-in web input) still follows the environment's proxies."""
    return url.startswith("http://") and any(name.lower() in _CREDENTIAL_HEADERS for name in headers)


def environment_route(
    url: str, headers: Mapping[str, str], verify: str | bool
) -> tuple[str | None, str | bool]:
    """The proxy (or None) and the CA bundle (a path, or True for the default) of one exchange.

    The environment as requests reads it, for both transports: ``HTTP(S)_PROXY``/``ALL_PROXY`` unless
    ``NO_PROXY`` matches, and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` unless the connection names
    its own ``ca_bundle`` (``verify``), which wins. A credential over plain http takes no proxy
    (:func:`key_in_clear_text`). A CA bundle that does not exist is a :class:`TransportError`
    (``"invalid"``: the request cannot be made as configured).
    """
    from requests.utils import get_environ_proxies, select_proxy

    proxy = None if key_in_clear_text(url, headers) else select_proxy(url, get_environ_proxies(url))
    named_by = "the connection's extra 'ca_bundle'"
    if verify is True:
        for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if os.environ.get(variable):
                verify, named_by = os.environ[variable], variable
                break
    if isinstance(verify, str) and url.startswith("https://") and not os.path.exists(verify):
        # Before connecting, and the same for both transports (requests would raise a bare OSError).
        raise TransportError(
            f"the CA bundle that {named_by} names does not exist", sent=False, kind="invalid"
        )
    return proxy, verify


class TransportError(Exception):
    """No usable answer arrived. The message names what happened, never what the stack said.

    :param reason: what happened, in our words (no header values, no server text).
    :param sent: the request had gone out in full (the service may have acted on it).
    :param kind: ``"connect"`` (no connection), ``"timeout"`` (the deadline passed), ``"dropped"``
        (the connection broke), ``"tls"`` (certificate verification), ``"invalid"`` (the request
        could not be built), ``"too_large"`` or ``"broken"`` (the answer breaks our bounds or HTTP).
    """

    def __init__(self, reason: str, *, sent: bool, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.kind = kind


@dataclass
class Answer:
    """A complete HTTP answer: status, headers and the whole (decompressed, bounded) body."""

    status: int
    headers: Mapping[str, str]
    body: bytes | bytearray

    def take_body(self) -> bytes | bytearray:
        """Hand the body over and forget it, so its new owner can free it early."""
        body, self.body = self.body, b""
        return body
