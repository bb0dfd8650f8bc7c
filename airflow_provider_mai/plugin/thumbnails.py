"""Small JPEG thumbnails of MAI images, made in the api-server and kept in a bounded memory cache.

A thumbnail is keyed by the image's normalised location, its sha256 and its size (the plugin looks
it up only after its own authorised read of that location): a re-run's new image has a new key,
so a stale thumbnail is never served for it, and the user's bucket is never written to. Every size
comes from one decode, within a CPU budget. Pillow comes
with the provider's ``ui`` extra; without it the gallery still lists the images and says how to
get thumbnails.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_provider_mai.links import THUMBNAIL_SIZES

if TYPE_CHECKING:
    from PIL import Image

#: Most bytes one thumbnail may take (the gallery's transfer budget depends on it).
MAX_THUMBNAIL_BYTES = 40 * 1024
#: JPEG qualities tried in turn until the thumbnail fits ``MAX_THUMBNAIL_BYTES``.
QUALITIES = (82, 72, 62, 50, 38)
#: Largest image (pixels) the plugin decodes: MAI images are at most one megapixel.
MAX_SOURCE_PIXELS = 4_000_000
#: The only format decoded, judged by content (signature, IHDR, bounded chunk structure) before
#: Pillow sees the bytes: the service answers PNG only. A progressive JPEG named .png (20,000 scans:
#: ~55 s of CPU) is refused without decoding; Pillow never tries another format (EPS runs Ghostscript).
SOURCE_FORMATS = ("PNG",)
#: Thumbnails made at once in one api-server process (each decode holds up to ~16 MB), and how
#: long a request waits for its turn before it is told to come back.
MAX_CONCURRENT_DECODES = 2
DECODE_WAIT_SECONDS = 30.0
_decodes = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
#: Default bound of the memory cache (~2,500 thumbnails of 320 px); ``[mai] ui_thumbnail_cache_mb``.
DEFAULT_CACHE_MB = 32


class ThumbnailsUnavailableError(RuntimeError):
    """Pillow is not installed in the api-server."""


class ThumbnailsBusyError(RuntimeError):
    """Every decoding slot stayed taken for the whole wait: ask again shortly."""


def pillow_available() -> bool:
    """Whether thumbnails can be made here."""
    import importlib.util

    return importlib.util.find_spec("PIL") is not None


#: Thread CPU seconds one image may cost (its structure check, decode and every thumbnail size):
#: past it the decode is stopped and the image remembered as failed, so it never runs again. The
#: worst image within the bounds above (4 MP, 16-bit RGBA, zlib's highest ratio, Adam7, 4,000
#: chunks) costs ~0.2 s, a MAI image ~0.02 s (``bench/ui_decode.py``): ten times the worst.
DECODE_CPU_SECONDS = 2.0


class _CpuBudget:
    """A deadline in this thread's CPU time (not wall time: waiting on the GIL or I/O is not spent)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.thread_time() + seconds

    def check(self) -> None:
        if time.thread_time() > self._deadline:
            raise _OverBudget(f"decoding it took more than {self.seconds:g} s of CPU time")


class _OverBudget(Exception):
    """Raised from inside Pillow's reads (not an OSError, which Pillow would take for truncation)."""


class _BudgetedBytes(io.BytesIO):
    """The PNG's bytes for Pillow, checking the budget at each read: Pillow decodes a PNG in steps
    of at most 64 KB of input, so a slow decode stops within one step of its budget."""

    def __init__(self, data: bytes, budget: _CpuBudget) -> None:
        super().__init__(data)
        self._budget = budget

    def read(self, size: int | None = -1) -> bytes:
        self._budget.check()
        return super().read(size)


def make_thumbnails(
    png: bytes,
    sizes: Sequence[int] = THUMBNAIL_SIZES,
    *,
    wait: float = DECODE_WAIT_SECONDS,
    cpu_seconds: float = DECODE_CPU_SECONDS,
) -> dict[int, bytes]:
    """JPEGs of every size in ``sizes`` (pixels on the longest side), each at most
    ``MAX_THUMBNAIL_BYTES``, from one decode of ``png``: a hostile image costs one decode, not one
    per size.

    At most ``MAX_CONCURRENT_DECODES`` are made at once in the process, each within ``cpu_seconds``
    of this thread's CPU time.

    :param wait: how long to wait (seconds) for a decoding slot.
    :raises ThumbnailsUnavailableError: without Pillow.
    :raises ThumbnailsBusyError: when no decoding slot was free within ``wait``.
    :raises ValueError: when ``png`` is not a PNG Pillow can read, is out of bounds, or its decode
        ran past ``cpu_seconds`` (remember it: it would fail again).
    """
    if not pillow_available():
        raise ThumbnailsUnavailableError(
            'thumbnails need Pillow in the api-server: pip install "airflow-provider-mai[ui]"'
        )
    if not _decodes.acquire(timeout=wait):
        raise ThumbnailsBusyError(
            f"{MAX_CONCURRENT_DECODES} thumbnails are being made already: try again shortly"
        )
    try:
        return _thumbnails(png, sorted(set(sizes), reverse=True), _CpuBudget(cpu_seconds))
    except _OverBudget as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    finally:
        _decodes.release()


def _thumbnails(png: bytes, sizes: Sequence[int], budget: _CpuBudget) -> dict[int, bytes]:
    from PIL import Image, UnidentifiedImageError

    from airflow_provider_mai.validation import check_png_structure

    try:
        # Bounded and pure: chunk count, ancillary bytes and pixels, before any decoding.
        check_png_structure(png, max_pixels=MAX_SOURCE_PIXELS)
    except ValueError as exc:
        raise ValueError(f"not a readable image: only PNG is decoded ({exc})") from None
    image: Image.Image
    try:
        image = Image.open(_BudgetedBytes(png, budget), formats=SOURCE_FORMATS)
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise ValueError(f"the image is {image.width}x{image.height}: too large to make a thumbnail")
        image.load()
    except UnidentifiedImageError:
        raise ValueError("not a readable image: only PNG is decoded") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    budget.check()
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    made: dict[int, bytes] = {}
    for size in sizes:  # largest first: each smaller one is made from the one before
        budget.check()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        made[size] = _jpeg(image)
    return made


def _jpeg(image: Image.Image) -> bytes:
    """``image`` as a JPEG of at most ``MAX_THUMBNAIL_BYTES`` (lower quality, then smaller, until it fits)."""
    for _shrink in range(12):  # 0.8**12 of 320 px is 22 px: far below the byte bound
        for quality in QUALITIES:
            out = io.BytesIO()
            image.save(out, "JPEG", quality=quality, optimize=True, progressive=True)
            if out.tell() <= MAX_THUMBNAIL_BYTES:
                return out.getvalue()
        # Even the lowest quality is too big (a very noisy image): shrink and try again.
        image = image.resize((max(1, image.width * 4 // 5), max(1, image.height * 4 // 5)))
    raise ValueError("cannot make a thumbnail within the size bound")


#: Images that failed to decode, remembered by sha256 so a hostile image costs one decode only.
MAX_REMEMBERED_FAILURES = 4096


class ThumbnailCache:
    """Thumbnails by (key, size), bounded by total bytes; least recently used leave first. The
    plugin's key is the verified location and the sha256 its bytes hashed to."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._failed: OrderedDict[str, str] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, size: int) -> bytes | None:
        with self._lock:
            data = self._items.get((key, size))
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end((key, size))
            return data

    def put(self, key: str, size: int, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            previous = self._items.pop((key, size), None)
            if previous is not None:
                self._bytes -= len(previous)
            self._items[(key, size)] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def failure(self, sha256: str) -> str | None:
        """Why the image with this sha256 could not be decoded, when it failed before."""
        with self._lock:
            return self._failed.get(sha256)

    def fail(self, sha256: str, why: str) -> None:
        """Remember that these bytes do not decode (bounded: the oldest failures are forgotten)."""
        with self._lock:
            self._failed[sha256] = why[:300]
            while len(self._failed) > MAX_REMEMBERED_FAILURES:
                self._failed.popitem(last=False)

    @property
    def size_bytes(self) -> int:
        """Bytes held now (never more than ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def cache_from_config() -> ThumbnailCache:
    """The api-server's cache, sized by ``[mai] ui_thumbnail_cache_mb`` (default 32 MB)."""
    try:  # the compat SDK import Airflow's provider checks ask for (Airflow 3.2+), else the old one
        from airflow.sdk.configuration import conf
    except ImportError:  # pragma: no cover - older Airflow
        from airflow.configuration import conf

    megabytes = conf.getint("mai", "ui_thumbnail_cache_mb", fallback=DEFAULT_CACHE_MB)
    if megabytes < 1:
        raise ValueError(f"[mai] ui_thumbnail_cache_mb must be at least 1; got {megabytes}")
    return ThumbnailCache(megabytes * 1024 * 1024)
