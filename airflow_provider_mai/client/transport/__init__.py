"""How bytes move: one HTTP exchange within bounds we chose, by either of two transports.

- :mod:`.sync` - requests/urllib3, for workers (one thread per request, a deadline watchdog).
- :mod:`.body` - what both share: the answer's body read within its cap (announced lengths checked
  before allocating, bounded decompression), with no I/O of its own.

A transport only moves bytes: what an answer means is :mod:`airflow_provider_mai.client.answers`'
job. Importing this package loads no HTTP library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Bytes read from the socket at a time.
READ_CHUNK = 1 << 20
#: Error answers are read up to this many bytes: enough for any message worth quoting.
MAX_ERROR_BODY = 64 * 1024
#: Encodings we can decompress with a bound (brotli or zstd are never asked for).
ACCEPT_ENCODING = "gzip, deflate"


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
