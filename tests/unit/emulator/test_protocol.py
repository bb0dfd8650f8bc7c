"""The service's rules without sockets (emulator/protocol.py): what is decided at once, what is drawn
later, and the success body as it is streamed."""

from __future__ import annotations

import base64
import json

import pytest

from airflow_provider_mai.emulator.protocol import MaiProtocol, SuccessBody
from tests.support.emulator_requests import GEN
from tests.support.helpers import make_png

HEADERS = {"api-key": "k", "content-type": "application/json"}


def generation(**fields) -> bytes:
    body = {"model": "mai-image-2-5", "prompt": "p", "width": 768, "height": 768, **fields}
    return json.dumps(body).encode()


def test_a_success_left_to_draw_later_holds_no_image_until_drawn():
    protocol = MaiProtocol(api_key="k", latency=3.0)
    reply, fields, _ = protocol.answer(GEN, HEADERS, generation(), draw_later=True)
    assert (reply.status, reply.body, reply.delay) == (200, None, 3.0)
    assert fields["prompt"] == "p"
    body = reply.drawn().body
    assert isinstance(body, SuccessBody)
    assert body.png.startswith(b"\x89PNG") and body.fields["size"] == "768x768"


def test_without_draw_later_the_body_is_the_json_dict_as_before():
    reply, _, _ = MaiProtocol(api_key="k").answer(GEN, HEADERS, generation())
    assert reply.draw is None
    assert set(reply.body) == {"created", "model", "size", "usage", "data"}
    assert base64.b64decode(reply.body["data"][0]["b64_json"]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({**HEADERS, "api-key": "wrong"}, generation(), 401),
        (HEADERS, generation(width=700), 400),
        (HEADERS, generation(model="nope"), 404),
        (HEADERS, generation(prompt="emulator-blocked"), 400),
    ],
)
def test_refusals_are_decided_at_once_even_when_drawing_later(headers, body, status):
    reply, _, _ = MaiProtocol(api_key="k", latency=30.0).answer(GEN, headers, body, draw_later=True)
    assert (reply.status, reply.draw, reply.delay) == (status, None, 0.0)
    assert "error" in reply.body


def test_the_rate_limit_is_decided_at_arrival_not_when_drawn():
    protocol = MaiProtocol(api_key="k", rpm=1)
    first, _, _ = protocol.answer(GEN, HEADERS, generation(), draw_later=True)
    second, _, _ = protocol.answer(GEN, HEADERS, generation(), draw_later=True)
    assert (first.status, second.status) == (200, 429)


def test_an_edit_input_with_an_unreadable_header_is_refused_at_once():
    boundary = "b0undary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nmai-image-2-5\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nblue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x1a\n"
        + b"not a png at all"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"api-key": "k", "content-type": f"multipart/form-data; boundary={boundary}"}
    protocol = MaiProtocol(api_key="k")
    reply, _, image = protocol.answer("/mai/v1/images/edits", headers, multipart, draw_later=True)
    assert (reply.status, reply.draw) == (400, None)
    assert reply.body["error"]["code"] == "invalid_image_format"
    assert image is not None and image.startswith(b"\x89PNG")


def test_the_streamed_body_is_the_json_text_of_the_dict():
    png = make_png(1024, 1024) * 3  # any bytes: the length is not a multiple of 3, nor of a chunk
    body = SuccessBody({"created": 1, "model": "MAI-Image-2.5", "size": "1024x1024", "usage": {"a": 1}}, png)
    text = json.dumps(body.as_json()).encode()
    pieces = list(body.chunks())
    assert b"".join(pieces) == text and len(body) == len(text)
    assert max(len(piece) for piece in pieces) <= 64 * 1024
    half = len(text) // 2
    assert b"".join(body.chunks(half)) == text[:half]
