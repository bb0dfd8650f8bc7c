"""The provider's data (models.py): requests, images and the result record."""

from __future__ import annotations


def test_repr_of_image_does_not_dump_bytes(hook):
    image = hook.generate_image("small", width=768, height=768)
    assert "png" not in repr(image).split("(", 1)[1].split(",")[0]
    assert len(repr(image)) < 500
