"""Small test helpers: real images drawn with Pillow."""

from __future__ import annotations

import io


def make_png(width: int = 800, height: int = 600, colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    """A real PNG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_jpeg(width: int = 553, height: int = 311) -> bytes:
    """A real JPEG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(buffer, "JPEG")
    return buffer.getvalue()
