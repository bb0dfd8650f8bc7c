"""Answers a hostile server gives (for RawServer): drips, bombs, raw heads."""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import Callable

from tests.support.servers import http_answer

Answer = Callable[[socket.socket, bytes], None]


#: Each drip step; a row's whole drip would take far longer than its timeout.
DRIP_STEP = 0.2


DRIP_STEPS = 150


def head_then(head: bytes, body: bytes = b"") -> Answer:
    def answer(conn: socket.socket, request: bytes) -> None:
        conn.sendall(head + b"\r\n" + body)

    return answer


def _bomb(encoding: str, inflated: int = 200 << 20) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    zeros = b"\0" * (1 << 20)
    out = [compressor.compress(zeros) for _ in range(inflated >> 20)]
    return b"".join(out) + compressor.flush()


_BOMBS: dict[str, bytes] = {}


def bomb(encoding: str) -> Answer:
    def prepare() -> None:
        # Made once, and before the server starts (RawServer calls prepare): compressing 200 MB
        # takes seconds on a busy machine, which must not count against the client's deadline.
        if encoding not in _BOMBS:
            _BOMBS[encoding] = _bomb(encoding)

    def answer(conn: socket.socket, request: bytes) -> None:
        prepare()
        conn.sendall(http_answer(200, _BOMBS[encoding], {"Content-Encoding": encoding}))

    answer.prepare = prepare  # type: ignore[attr-defined]
    return answer


def drip(kind: str) -> Answer:
    def answer(conn: socket.socket, request: bytes) -> None:
        if kind == "headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(DRIP_STEPS):
                conn.sendall(b"X")  # one header line that never ends
                time.sleep(DRIP_STEP)
            return
        if kind == "length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(DRIP_STEPS):
            conn.sendall(b"{" if kind == "length" else b"1\r\n{\r\n")
            time.sleep(DRIP_STEP)

    return answer
