"""Checks the service documents, applied before any request is sent (no quota spent on bad input).

Also the byte-level image checks: the type of an image is read from its bytes, never its name.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from airflow_provider_mai.api import MAX_PIXELS, MAX_PROMPT_CHARS, MIN_SIDE
from airflow_provider_mai.exceptions import MaiConfigurationError, MaiValidationError

#: The largest ``extra_params`` sent, as JSON: options are flags and short values, never payloads.
MAX_EXTRA_PARAMS_BYTES = 64 * 1024

#: What ``if_exists`` may be: when the output path already holds an image.
IF_EXISTS_CHOICES = ("overwrite", "skip", "fail")
#: How an operator names its PNG in a folder: per run (each run its own image), or per request
#: (the same request always lands at the same path, so ``if_exists="skip"`` reuses it anywhere).
NAMING_CHOICES = ("run", "request")
#: The longest output file name: 255 bytes less what the write's probe and temporary names add.
MAX_OUTPUT_NAME_BYTES = 255 - len("..0123456789ab.probe")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def validate_prompt(prompt: Any) -> str:
    """Return the prompt if it is a non-empty string within the documented length."""
    if not isinstance(prompt, str):
        raise MaiValidationError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise MaiValidationError("prompt is empty: describe the image to generate or the edit to make")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise MaiValidationError(
            f"prompt has {len(prompt):,} characters; the service accepts at most 32,000 tokens "
            f"(about {MAX_PROMPT_CHARS:,} characters)"
        )
    return prompt


def validate_extra_params(extra_params: Any, reserved: frozenset[str]) -> dict[str, Any]:
    """A copy of ``extra_params`` (None: empty) if it is a dict of JSON values, within
    :data:`MAX_EXTRA_PARAMS_BYTES`, that sets none of ``reserved``."""
    if extra_params is None:
        return {}
    if not isinstance(extra_params, Mapping):
        raise MaiValidationError(f"extra_params must be a dict, got {type(extra_params).__name__}")
    clash = sorted(str(key) for key in reserved & set(extra_params))
    if clash:
        raise MaiValidationError(
            f"extra_params cannot set {', '.join(clash)}: pass them as the call's own arguments"
        )
    try:
        encoded = json.dumps(extra_params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MaiValidationError(
            f"extra_params must hold JSON values only (strings, finite numbers, booleans, lists, "
            f"dicts): {type(exc).__name__}"
        ) from None
    if len(encoded) > MAX_EXTRA_PARAMS_BYTES:
        raise MaiValidationError(
            f"extra_params is {len(encoded):,} bytes as JSON; at most {MAX_EXTRA_PARAMS_BYTES:,} are sent"
        )
    return dict(extra_params)


def coerce_dimension(name: str, value: Any) -> int:
    """Turn a width/height (int, or a string rendered by a template) into an int, or explain why not."""
    if isinstance(value, bool):
        raise MaiValidationError(f"{name} must be a whole number of pixels, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text.lstrip("+")
        if digits.isascii() and digits.isdigit() and len(digits) <= 6:
            return int(digits)
    raise MaiValidationError(f"{name} must be a whole number of pixels, got {value!r}")


def validate_size(width: Any, height: Any) -> tuple[int, int]:
    """Apply the documented size rule: each side >= 768 and width * height <= 1,048,576."""
    w = coerce_dimension("width", width)
    h = coerce_dimension("height", height)
    rule = f"each side at least {MIN_SIDE} px and width x height at most {MAX_PIXELS:,} px"
    for name, side in (("width", w), ("height", h)):
        if side < MIN_SIDE:
            raise MaiValidationError(f"{name}={side} is too small: the service needs {rule}")
    if w * h > MAX_PIXELS:
        raise MaiValidationError(
            f"{w}x{h} is {w * h:,} px, too many: the service needs {rule} (e.g. 1024x1024, 768x1365)"
        )
    return w, h


def image_mime_type(data: bytes) -> str | None:
    """``image/png`` or ``image/jpeg`` judged by the bytes, else None."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(JPEG_SIGNATURE):
        return "image/jpeg"
    return None


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError when the bytes are not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ValueError("PNG header gives a zero size")
    return width, height


def _jpeg_has_frame(data: bytes) -> bool:
    """Walk JPEG markers to a start-of-frame, so a lone signature does not pass as an image."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return i + 2 + length <= len(data) and length >= 8
        i += 2 + length
    return False


def validate_edit_image(data: Any) -> str:
    """Check that edit input is a real PNG or JPEG; return its MIME type."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MaiValidationError(f"edit input must be image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise MaiValidationError("edit input is empty (0 bytes)")
    mime = image_mime_type(data)
    if mime == "image/png":
        try:
            png_size(data)
        except ValueError:
            raise MaiValidationError(
                "edit input starts like a PNG but its header is truncated or broken"
            ) from None
        return mime
    if mime == "image/jpeg":
        if not _jpeg_has_frame(data):
            raise MaiValidationError("edit input starts like a JPEG but has no image frame (truncated?)")
        return mime
    head = data[:12]
    kind = (
        "GIF"
        if head.startswith((b"GIF87a", b"GIF89a"))
        else "WebP"
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP"
        else "not an image"
    )
    raise MaiValidationError(f"edit input must be PNG or JPEG (judged by its bytes); this is {kind}")


def check_png_name(name: str, shown: str) -> None:
    """The file name of an output must end in ``.png`` and fit a file system's 255 bytes."""
    if not name.lower().endswith(".png"):
        raise MaiConfigurationError(
            f"output_path {shown} must name a .png file (or end with '/' to name a folder): the "
            "service always answers PNG, and the provenance sidecar takes the .json name beside it"
        )
    if len(name.encode()) > MAX_OUTPUT_NAME_BYTES:
        raise MaiConfigurationError(
            f"output_path's file name is {len(name.encode())} bytes long; at most {MAX_OUTPUT_NAME_BYTES} fit"
        )


#: Bounds of a PNG's structure, checked before anything decodes it: a MAI image has a few dozen
#: chunks and at most a few KB of ancillary data (text, colour profile); a PNG of a million empty
#: chunks costs a decoder tens of seconds of CPU.
MAX_PNG_CHUNKS = 4096
MAX_PNG_ANCILLARY_BYTES = 1024 * 1024
MAX_PNG_PIXELS = 4_000_000


def check_png_structure(
    data: bytes,
    *,
    max_chunks: int = MAX_PNG_CHUNKS,
    max_ancillary_bytes: int = MAX_PNG_ANCILLARY_BYTES,
    max_pixels: int = MAX_PNG_PIXELS,
) -> tuple[int, int]:
    """Width and height of a PNG whose structure is within bounds: the signature, IHDR first, at
    most ``max_chunks`` chunks, at most ``max_ancillary_bytes`` in ancillary chunks, at most
    ``max_pixels`` pixels, and an IEND. Pure and linear in the chunk count (no decoding, no CRC).

    :raises ValueError: saying which bound the bytes break.
    """
    width, height = png_size(data)
    if width * height > max_pixels:
        raise ValueError(f"the PNG is {width}x{height}: more than {max_pixels:,} pixels")
    view = memoryview(data)
    offset, chunks, ancillary = len(PNG_SIGNATURE), 0, 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", view, offset)
        kind = bytes(view[offset + 4 : offset + 8])
        chunks += 1
        if chunks > max_chunks:
            raise ValueError(f"the PNG has more than {max_chunks:,} chunks")
        if offset + 12 + length > len(data):
            raise ValueError("the PNG is truncated (a chunk runs past its end)")
        if kind == b"IEND":
            return width, height
        if kind[:1].islower():  # ancillary: not needed to show the image
            ancillary += length
            if ancillary > max_ancillary_bytes:
                raise ValueError(f"the PNG has more than {max_ancillary_bytes:,} bytes of ancillary chunks")
        offset += 12 + length
    raise ValueError("the PNG has no IEND chunk (truncated)")
