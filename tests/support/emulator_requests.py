"""Plain HTTP requests to the emulator, for the emulator's own tests."""

from __future__ import annotations

import requests

from tests.support.connections import API_KEY

GEN = "/mai/v1/images/generations"


def post(emulator, path=GEN, key=API_KEY, **body):
    payload = {"model": "mai-image-2-5", "prompt": "p", "width": 1024, "height": 1024, **body}
    return requests.post(emulator.url + path, json=payload, headers={"api-key": key}, timeout=30)
