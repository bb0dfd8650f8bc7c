"""Pictures drawn by the emulator: deterministic for a prompt, visibly derived from it.

A generation is a two-colour gradient chosen from the prompt's hash, a few shapes and the prompt's
text, with a fine deterministic grain so its PNG is about as large as a real photo-like answer
(~1.6 MB at 1024x1024). An edit scales the input the way the service does (aspect ratio kept,
towards ~1 megapixel, sides snapped to 16), tints and posterises it and writes the edit prompt on it.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import textwrap
from functools import lru_cache
from typing import Any

from airflow_provider_mai.api import MAX_PIXELS, MIN_SIDE

SNAP = 16


def snap(value: int) -> int:
    """Round a side down to a multiple of 16, as the service has been seen to (1365 -> 1360)."""
    return max(SNAP, value // SNAP * SNAP)


def generation_size(width: int, height: int) -> tuple[int, int]:
    """The size the service returns for a valid requested size."""
    return snap(width), snap(height)


def edit_size(width: int, height: int) -> tuple[int, int]:
    """The size of an edit's output for an input of ``width`` x ``height``.

    Public clients saw the aspect ratio kept and the image scaled towards one megapixel, the short
    side at least 768 (553x311 came back 1360x768).
    """
    scale = math.sqrt(MAX_PIXELS / (width * height))
    out_w, out_h = snap(int(width * scale)), snap(int(height * scale))
    if min(out_w, out_h) < MIN_SIDE:
        if out_w < out_h:
            out_w, out_h = MIN_SIDE, snap(min(int(height * MIN_SIDE / width), MAX_PIXELS // MIN_SIDE))
        else:
            out_w, out_h = snap(min(int(width * MIN_SIDE / height), MAX_PIXELS // MIN_SIDE)), MIN_SIDE
    return out_w, out_h


def _palette(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    digest = hashlib.sha256(text.encode()).digest()
    return (
        (digest[0], digest[1], digest[2]),
        (digest[3], digest[4], digest[5]),
        int.from_bytes(digest[6:14], "big"),
    )


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _contrast(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)


def _encode(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _write_text(
    draw: Any, text: str, box_width: int, top: int, left: int, colour: Any, size: int, max_lines: int = 8
) -> None:
    font = _font(size)
    per_line = max(8, int(box_width / (size * 0.55)))
    lines = textwrap.wrap(text, per_line)[:max_lines]
    for i, line in enumerate(lines):
        draw.text((left, top + i * int(size * 1.25)), line, font=font, fill=colour)


@lru_cache(maxsize=16)
def render_generation(prompt: str, width: int, height: int, model: str) -> bytes:
    """A PNG of exactly ``width`` x ``height`` drawn from the prompt."""
    from PIL import Image, ImageDraw

    first, second, seed = _palette(prompt)
    rng = random.Random(seed)
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), first), Image.new("RGB", (width, height), second), mask
    )
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        radius = rng.randint(min(width, height) // 12, min(width, height) // 4)
        cx, cy = rng.randint(0, width), rng.randint(0, height)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    image = Image.blend(image, Image.merge("RGB", (grain, grain, grain)), 0.12)
    draw = ImageDraw.Draw(image)
    ink = _contrast(first)
    _write_text(draw, prompt, width - 80, 40, 40, ink, max(24, width // 22))
    draw.text((40, height - 60), f"{model} - emulated", font=_font(28), fill=ink)
    return _encode(image)


def readable(source: bytes) -> bool:
    """Whether Pillow can read the image's header (its pixels are decoded only when drawn)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source)) as opened:
            return opened.width > 0 and opened.height > 0
    except Exception:
        return False


def render_edit(source: bytes, prompt: str, model: str) -> bytes:
    """The input image, rescaled like the service does, tinted, posterised and captioned."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(source)) as opened:
        picture = opened.convert("RGB")
    width, height = edit_size(*picture.size)
    picture = picture.resize((width, height))
    tint, _, _ = _palette(prompt)
    picture = ImageOps.posterize(Image.blend(picture, Image.new("RGB", (width, height), tint), 0.35), 3)
    draw = ImageDraw.Draw(picture)
    # Everything the edit writes goes into its own band at the bottom, so it never lands on the
    # original's caption (a generation writes its prompt at the top): the label on the band's
    # first line, the edit prompt under it, as many lines as the band holds.
    band = max(130, height // 5)
    top = height - band
    draw.rectangle((0, top, width, height), fill=tint)
    ink = _contrast(tint)
    draw.text((30, top + 12), f"{model} - emulated edit", font=_font(26), fill=ink)
    size = max(22, width // 30)
    lines = max(1, (band - 56) // int(size * 1.25))
    _write_text(draw, f"EDIT: {prompt}", width - 60, top + 48, 30, ink, size, max_lines=lines)
    return _encode(picture)
