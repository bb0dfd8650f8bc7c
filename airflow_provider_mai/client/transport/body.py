"""An answer's body, read within its cap: the rules both transports share, with no I/O.

The cap holds however the server lies: an announced ``Content-Length`` is checked before anything
is allocated, a body without one is counted as it arrives, and ``gzip``/``deflate`` are inflated
by us in steps that can never pass the cap by more than one byte (a decompression bomb costs at
most the cap). Error answers are cut at their cap instead of refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from airflow_provider_mai.client.transport import TransportError


def content_length(headers: Mapping[str, str]) -> int | None:
    """The announced body length, or None; a value that is not plain ASCII digits is broken HTTP."""
    text = headers.get("content-length")
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        raise bad_length()
    return int(text)


def bad_length() -> TransportError:
    """The error of an answer whose ``Content-Length`` is not a number."""
    return TransportError("the answer's Content-Length is not a number", sent=True, kind="broken")


def _decoder(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _DeflateDecoder()
    if encoding in ("", "identity"):
        return None
    raise TransportError("the answer uses a content encoding we did not ask for", sent=True, kind="broken")


class _DeflateDecoder:
    """``deflate`` as servers send it: zlib-wrapped per the RFC, or raw (a common mistake)."""

    def __init__(self) -> None:
        self._inner = zlib.decompressobj()
        self._first = True

    @property
    def unconsumed_tail(self) -> bytes:
        return self._inner.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._inner.decompress(data, max_length)
            except zlib.error:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._inner.decompress(data, max_length)


def too_large(limit: int) -> TransportError:
    """The error of an answer over its cap."""
    return TransportError(
        f"the answer is larger than {limit:,} bytes (the connection's max_response_mb)",
        sent=True,
        kind="too_large",
    )


def cut_off(received: int, length: int) -> TransportError:
    """The error of an answer that ended before its announced length."""
    return TransportError(
        f"the answer was cut off after {received:,} of {length:,} bytes", sent=True, kind="dropped"
    )


def ended_early() -> TransportError:
    """The error of an answer whose connection closed before its announced length (counts unknown)."""
    return TransportError("the answer was cut off before its announced end", sent=True, kind="dropped")


class BodyReader:
    """Collects one answer's body as raw (still encoded) chunks arrive, within ``limit``.

    :param headers: the answer's headers (``Content-Length``, ``Content-Encoding``).
    :param limit: the largest body kept, after decompression.
    :param cut_at_limit: keep the first ``limit`` bytes and stop (error answers) instead of failing.

    Raises :class:`TransportError` as soon as a rule is broken: an announced length over the cap
    (before anything is allocated), an unknown encoding, more bytes than the cap.
    """

    def __init__(self, headers: Mapping[str, str], limit: int, *, cut_at_limit: bool) -> None:
        self.length = content_length(headers)
        self._decoder = _decoder((headers.get("content-encoding") or "").strip().lower())
        self.limit = limit
        self.cut_at_limit = cut_at_limit
        if self.length is not None and self.length > limit and not cut_at_limit:
            raise too_large(limit)
        self.body = bytearray()
        #: The body was cut at the cap (an error answer): the rest was never read.
        self.cut = False

    @property
    def fixed_size(self) -> int | None:
        """The exact number of bytes to read into one buffer, when the length is announced and the
        body is not encoded (a transport may then read in place); else None."""
        if self._decoder is None and self.length is not None:
            return min(self.length, self.limit)
        return None

    def feed(self, chunk: bytes) -> bool:
        """Take the next raw chunk; True when nothing more should be read (cut at the cap)."""
        body = self.body
        if self._decoder is None:
            body += chunk
        else:
            decoder = self._decoder
            body += decoder.decompress(chunk, self.limit - len(body) + 1)
            while decoder.unconsumed_tail and len(body) <= self.limit:
                body += decoder.decompress(decoder.unconsumed_tail, self.limit - len(body) + 1)
        if self.length is not None and self._decoder is None and len(body) > self.length:
            raise TransportError("the answer is longer than its Content-Length", sent=True, kind="broken")
        if len(body) > self.limit and not self.cut_at_limit:
            raise too_large(self.limit)
        if self.cut_at_limit and len(body) >= self.limit:
            del body[self.limit :]
            self.cut = self.length != len(body) or self._decoder is not None
            return True
        return False

    def finish(self) -> tuple[bytearray, bool]:
        """The body and whether it was read to its end (False when cut at the cap).

        Raises :class:`TransportError` when the answer ended before its announced length.
        """
        if (
            self.length is not None
            and self._decoder is None
            and not self.cut
            and len(self.body) < self.length
        ):
            raise cut_off(len(self.body), self.length)
        return self.body, not self.cut
