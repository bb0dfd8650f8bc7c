"""The documented rules (validation.py), checked before anything is sent: sizes, prompts, inputs, extras."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.exceptions import (
    MaiValidationError,
)
from airflow_provider_mai.hooks.mai import MaiHook


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 40, "GIF"),
        (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 40, "WebP"),
        (b"just some text pretending to be a png", "not an image"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "no image frame"),
    ],
)
def test_edit_rejects_non_images_before_sending(hook, emulator, tmp_path, data, reason):
    named_png = tmp_path / "looks-like.png"
    named_png.write_bytes(data)
    with pytest.raises(MaiValidationError, match=reason):
        hook.edit_image(str(named_png), "x")
    assert emulator.requests == []


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "height"),
    [(768, 768), (1024, 1024), (768, 1365), (1365, 768), ("1024", "1024"), (1024.0, 768)],
)
def test_valid_sizes_are_sent(hook, emulator, width, height):
    image = hook.generate_image("x", width=width, height=height)
    assert image.width == int(width) // 16 * 16
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    ("width", "height", "match"),
    [
        (767, 1024, "width=767 is too small"),
        (1024, 767, "height=767 is too small"),
        (1025, 1024, "too many"),
        (1024, 1025, "too many"),
        (769, 1365, "too many"),
        (0, 1024, "too small"),
        (-5, 1024, "too small"),
        ("big", 1024, "whole number"),
        (1024.5, 1024, "whole number"),
        (True, 1024, "whole number"),
        (None, 1024, "whole number"),
    ],
)
def test_invalid_sizes_never_reach_the_service(hook, emulator, width, height, match):
    with pytest.raises(MaiValidationError, match=match) as info:
        hook.generate_image("x", width=width, height=height)
    assert isinstance(info.value, AirflowFailException)
    assert emulator.requests == []


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", None, 42, "x" * 128_001])
def test_bad_prompts_never_reach_the_service(hook, emulator, prompt):
    with pytest.raises(MaiValidationError):
        hook.generate_image(prompt, width=768, height=768)
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"seed_like": float("nan")}, "JSON values only"),
        ({"when": __import__("datetime").date(2026, 1, 1)}, "JSON values only"),
        ({"blob": "x" * 70_000}, "at most 65,536"),
    ],
    ids=["nan", "date", "huge"],
)
def test_extra_params_that_are_not_json_fail_before_sending(connect, emulator, extra, match):
    hook = MaiHook(connect())
    with pytest.raises(MaiValidationError, match=match):
        hook.generate_image("x", width=768, height=768, extra_params=extra)
    assert emulator.requests == []


@pytest.mark.parametrize("width", ["1024\u00b2", "1" * 5000, "\uff11\uff10\uff12\uff14"])
def test_sizes_that_only_look_like_numbers_are_validation_errors(connect, emulator, width):
    with pytest.raises(MaiValidationError, match="whole number"):
        MaiHook(connect()).generate_image("x", width=width, height=1024)
    assert emulator.requests == []


def test_png_structure_check_bounds_chunks_ancillary_bytes_and_pixels():
    import struct
    import zlib

    from airflow_provider_mai.validation import check_png_structure
    from tests.support.helpers import chunk_bomb_png, make_jpeg, make_png

    assert check_png_structure(make_png(64, 48)) == (64, 48)
    with pytest.raises(ValueError, match="more than 4,096 chunks"):
        check_png_structure(chunk_bomb_png())
    png = make_png(8, 8)
    text = b"k\0" + b"x" * 2_000_000
    big = struct.pack(">I", len(text)) + b"tEXt" + text + zlib.crc32(b"tEXt" + text).to_bytes(4, "big")
    with pytest.raises(ValueError, match="ancillary"):
        check_png_structure(png[:33] + big + png[33:])
    with pytest.raises(ValueError, match="truncated"):
        check_png_structure(png[:-20])
    huge = bytearray(png)
    huge[16:24] = struct.pack(">II", 30_000, 30_000)
    with pytest.raises(ValueError, match="more than 4,000,000 pixels"):
        check_png_structure(bytes(huge))
    with pytest.raises(ValueError, match="not a PNG"):
        check_png_structure(make_jpeg())
