"""Worst thumbnail decodes within the plugin's bounds: CPU seconds per hostile PNG.

The plugin decodes a PNG only after ``validation.check_png_structure`` (at most 4 megapixels,
4,096 chunks, 1 MB of ancillary chunks) and within the 16 MB read bound. This builds the most
expensive images those bounds let through - the largest pixel count at 16 bits per channel with
alpha, compressed as far as zlib goes, Adam7-interlaced, filtered with Paeth on every row, split
into the most chunks, carrying compressed text chunks that inflate - and prints the thread CPU time
of one decode (``thumbnails.make_thumbnails``: structure check, decode, every thumbnail size) and of
Pillow's ``load()`` alone. Each figure is the median of ``--runs``; the budget the plugin enforces
(``thumbnails.DECODE_CPU_SECONDS``) should sit well above the worst of them.

    python bench/ui_decode.py [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import struct
import time
import zlib
from collections.abc import Callable

SIDE = 2000  # 2000 x 2000 = the 4,000,000-pixel bound
#: Adam7 passes: (x start, y start, x step, y step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    *,
    side: int = SIDE,
    bit_depth: int = 16,
    colour_type: int = 6,  # RGBA
    interlaced: bool = False,
    noise: bool = False,
    row_filter: int = 4,  # Paeth: the dearest to undo
    idat_chunks: int = 1,
    extra: bytes = b"",
) -> bytes:
    """A PNG written by hand (Pillow writes neither Adam7 nor chosen filters)."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    pixel_bytes = channels * bit_depth // 8
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        width, height = len(range(x0, side, dx)), len(range(y0, side, dy))
        if not width or not height:
            continue
        row = width * pixel_bytes
        for _ in range(height):
            raw.append(row_filter)
            raw += os.urandom(row) if noise else bytes(row)
    compressed = zlib.compress(bytes(raw), 9)
    step = -(-len(compressed) // idat_chunks)
    idats = b"".join(chunk(b"IDAT", compressed[i : i + step]) for i in range(0, len(compressed), step))
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 1 if interlaced else 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + idats + chunk(b"IEND", b"")


def text_bomb(chunks: int, budget: int) -> bytes:
    """``chunks`` zTXt chunks within ``budget`` ancillary bytes, each inflating as far as zlib goes."""
    per_chunk = budget // chunks - 12
    inflated = 1 << 16
    while len(zlib.compress(bytes(inflated * 2), 9)) + 3 <= per_chunk and inflated < (1 << 20):
        inflated *= 2
    body = b"k\x00\x00" + zlib.compress(bytes(inflated), 9)
    return chunk(b"zTXt", body) * chunks


def cases() -> dict[str, Callable[[], bytes]]:
    from airflow_provider_mai.validation import MAX_PNG_ANCILLARY_BYTES, MAX_PNG_CHUNKS

    return {
        "4 MP 16-bit RGBA, zeros, max compression": lambda: png(),
        "  ... Adam7-interlaced": lambda: png(interlaced=True),
        "  ... no filter on any row": lambda: png(row_filter=0),
        "  ... in 4,000 IDAT chunks": lambda: png(idat_chunks=MAX_PNG_CHUNKS - 96),
        "  ... + 1 MB of inflating zTXt (in chunks)": lambda: png(
            extra=text_bomb(2000, MAX_PNG_ANCILLARY_BYTES - 1024)
        ),
        "4 MP 8-bit RGB noise (12 MB, incompressible)": lambda: png(bit_depth=8, colour_type=2, noise=True),
        "  ... Adam7-interlaced ": lambda: png(bit_depth=8, colour_type=2, noise=True, interlaced=True),
        "1024x1024 8-bit RGB noise (a real MAI size)": lambda: png(
            side=1024, bit_depth=8, colour_type=2, noise=True, row_filter=0
        ),
    }


def cpu(call: Callable[[], object]) -> float:
    """Thread CPU seconds of ``call()`` (which may fail: a refusal costs time too)."""
    start = time.thread_time()
    with contextlib.suppress(Exception):  # e.g. Pillow's own text-memory bound
        call()
    return time.thread_time() - start


def load(data: bytes) -> None:
    from PIL import Image

    Image.open(io.BytesIO(data), formats=["PNG"]).load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from airflow_provider_mai.plugin import thumbnails

    print(f"budget per decode: {thumbnails.DECODE_CPU_SECONDS:.1f} s of thread CPU time")
    print(f"{'case':48} {'bytes':>11} {'load()':>8} {'thumbnails':>11}  result")
    for name, build in cases().items():
        data = build()
        loads, wholes, outcome = [], [], "ok"
        for _ in range(args.runs):
            loads.append(cpu(lambda data=data: load(data)))
            start = time.thread_time()
            try:
                made = thumbnails.make_thumbnails(data, wait=60)
                outcome = "ok: " + ", ".join(f"{size} px" for size in made)
            except ValueError as exc:
                outcome = f"refused: {exc}"[:70]
            wholes.append(time.thread_time() - start)
        load_cpu, whole_cpu = statistics.median(loads), statistics.median(wholes)
        print(f"{name:48} {len(data):>11,} {load_cpu:>7.2f}s {whole_cpu:>10.2f}s  {outcome}")


if __name__ == "__main__":
    main()
