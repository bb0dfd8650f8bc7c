"""The wire form of a request (client/rules.py): JSON for generations, a form for edits, extra params."""

from __future__ import annotations

import json

import pytest

from airflow_provider_mai.exceptions import (
    MaiValidationError,
)
from tests.support.helpers import make_jpeg, make_png


def test_extra_params_are_merged_into_the_body(hook, emulator):
    hook.generate_image("x", width=768, height=768, extra_params={"auto_aspect_ratio": True})
    assert emulator.requests[0].fields["auto_aspect_ratio"] is True


@pytest.mark.parametrize("key", ["model", "prompt", "width", "height"])
def test_extra_params_cannot_override_validated_fields(hook, emulator, key):
    with pytest.raises(MaiValidationError, match=key):
        hook.generate_image("x", extra_params={key: 1})
    assert emulator.requests == []


def test_edit_jpeg_is_sent_as_jpeg(hook, emulator):
    hook.edit_image(make_jpeg(), "brighter")
    assert emulator.requests[0].fields["image_content_type"] == "image/jpeg"


def test_edit_extra_params_travel_as_form_fields(hook, emulator):
    hook.edit_image(make_png(), "x", extra_params={"auto_aspect_ratio": False, "width": 1024, "height": 1024})
    fields = emulator.requests[0].fields
    assert fields["auto_aspect_ratio"] == "false"
    assert fields["width"] == "1024"


def test_json_body_is_what_the_docs_describe(hook, emulator):
    hook.generate_image("doc check", width=768, height=1365)
    (sent,) = emulator.requests
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(json.dumps(sent.fields)) == {
        "model": "mai-image-2-5",
        "prompt": "doc check",
        "width": 768,
        "height": 1365,
    }
