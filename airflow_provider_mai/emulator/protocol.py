"""The MAI image API's rules, as the emulator applies them: a request in, an answer out. No sockets.

API key or bearer auth (401), deployment lookup (404), the documented size rules and the observed
error bodies (400), content filtering (400 ``content_safety_violation``), a per-deployment
requests-per-minute limit over a sliding minute (429 with ``Retry-After``), and success bodies with
``created``, ``model``, ``size``, ``usage`` and ``data[0].b64_json``.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import random
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import airflow_provider_mai.emulator.render as render
from airflow_provider_mai.api import EDITS_PATH, GENERATIONS_PATH, MAX_PIXELS, MIN_SIDE

MODELS = ("MAI-Image-2", "MAI-Image-2e", "MAI-Image-2.5", "MAI-Image-2.5-Flash")
EDIT_MODELS = frozenset({"MAI-Image-2.5", "MAI-Image-2.5-Flash"})
#: With no deployment configured, one per model under these names.
DEFAULT_DEPLOYMENTS = {
    "mai-image-2": "MAI-Image-2",
    "mai-image-2e": "MAI-Image-2e",
    "mai-image-2-5": "MAI-Image-2.5",
    "mai-image-2-5-flash": "MAI-Image-2.5-Flash",
}
#: Parameters public clients saw the service refuse with 400.
REFUSED_PARAMS = frozenset({"seed", "negative_prompt", "response_format"})
#: Prompts containing one of these are "blocked by the content filter" (deterministic, for tests).
DEFAULT_BLOCKED_TERMS = ("emulator-blocked", "[violence]")


#: Bytes of PNG turned into base64 at a time when a success body is streamed (a multiple of 3, so
#: the pieces join into one base64 text); 48 KiB in, 64 KiB out.
_B64_CHUNK = 3 * 16 * 1024


@dataclass(frozen=True)
class SuccessBody:
    """A success body before it is JSON: its fields and the PNG that ``data[0].b64_json`` carries.

    Sent with :meth:`chunks`, an answer costs its PNG (shared with the render cache when the same
    image was drawn before) and 64 KiB, not the ~4 copies its base64 and JSON texts would.

    :param fields: ``created``, ``model``, ``size``, ``usage``.
    :param png: the image.
    """

    fields: dict[str, Any]
    png: bytes

    def as_json(self) -> dict[str, Any]:
        """The body as a dict, the image in base64 text."""
        return {**self.fields, "data": [{"b64_json": base64.b64encode(self.png).decode("ascii")}]}

    def _ends(self) -> tuple[bytes, bytes]:
        # The same bytes json.dumps(self.as_json()) gives: "data" is the last key.
        head = json.dumps({**self.fields, "data": [{"b64_json": ""}]}).encode()
        cut = head.rindex(b'""') + 1
        return head[:cut], head[cut:]

    def __len__(self) -> int:
        """The length of the JSON text in bytes."""
        head, tail = self._ends()
        return len(head) + 4 * ((len(self.png) + 2) // 3) + len(tail)

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The JSON text in pieces of at most 64 KiB, stopping after ``limit`` bytes if given.

        :param limit: how many bytes to give in all (None: the whole text).
        """
        head, tail = self._ends()
        left = len(self) if limit is None else limit

        def pieces() -> Iterator[bytes]:
            yield head
            view = memoryview(self.png)
            for start in range(0, len(view), _B64_CHUNK):
                yield base64.b64encode(view[start : start + _B64_CHUNK])
            yield tail

        for piece in pieces():
            if left <= 0:
                return
            yield piece[:left]
            left -= len(piece)


@dataclass
class Reply:
    """An answer to send: status, body (dict as JSON, str or bytes), headers, and how long the
    service "worked" on it before answering.

    A success can leave its body to be drawn later (``draw``): a server then waits out ``delay``
    holding no image, and draws the body only when it is about to send it.
    """

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    #: Makes the body (renders the image); None when ``body`` is ready. May raise :class:`Refusal`.
    draw: Callable[[], SuccessBody] | None = None

    def drawn(self) -> Reply:
        """This reply with its body made (itself when there is nothing to draw)."""
        if self.draw is None:
            return self
        return Reply(self.status, self.draw(), self.headers, self.delay)


class Refusal(Exception):
    """Raised while applying the rules to answer with an Azure-style error at once."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **more: Any
    ) -> None:
        super().__init__(message)
        self.reply = Reply(status, {"error": {"code": code, "message": message, **more}}, dict(headers or {}))


class RateLimiter:
    """Requests per minute per deployment over a sliding 60-second window."""

    def __init__(self, rpm: int | None, window: float = 60.0) -> None:
        self.rpm = rpm
        self.window = window
        self._seen: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def admit(self, deployment: str) -> float | None:
        """None if admitted, else seconds until a slot frees up."""
        if not self.rpm:
            return None
        now = time.monotonic()
        with self._lock:
            seen = self._seen[deployment]
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.rpm:
                return seen[0] + self.window - now
            seen.append(now)
            return None


class MaiProtocol:
    """The service's behaviour for one request: authorise, parse, check, render, answer.

    :param deployments: deployment name -> model name.
    :param api_key: the key to accept in the ``api-key`` header; None accepts any non-empty key.
    :param rpm: requests per minute allowed per deployment (None: unlimited).
    :param latency: seconds each successful answer takes, or a ``(low, high)`` range.
    :param blocked_terms: prompt fragments the content filter blocks.
    :param seed: seed for the latency draws, for repeatable runs.
    """

    def __init__(
        self,
        *,
        deployments: Mapping[str, str] | None = None,
        api_key: str | None = "emulator-key",
        rpm: int | None = None,
        latency: float | tuple[float, float] = 0.0,
        blocked_terms: Iterable[str] = DEFAULT_BLOCKED_TERMS,
        seed: int | None = None,
    ) -> None:
        self.deployments = dict(deployments or DEFAULT_DEPLOYMENTS)
        for name, model in self.deployments.items():
            if model not in MODELS:
                raise ValueError(f"deployment {name!r}: unknown model {model!r}; one of {', '.join(MODELS)}")
        self.api_key = api_key
        self.latency = latency
        self.blocked_terms = tuple(t.lower() for t in blocked_terms)
        self.limiter = RateLimiter(rpm)
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()

    def answer(
        self, path: str, headers: Mapping[str, str], raw: bytes, *, draw_later: bool = False
    ) -> tuple[Reply, dict[str, Any], bytes | None]:
        """The reply to a POST, with the request's parsed fields and edit image (for the log).

        :param path: the request's path (a query string is ignored).
        :param headers: the request's headers, names in lower case.
        :param raw: the request's body.
        :param draw_later: leave a success's image undrawn (``Reply.draw``; ``Reply.drawn()``
            makes it, a :class:`SuccessBody`), so that a caller can wait out the latency without
            holding it, bound how many images are drawn at once, and stream the answer. Every
            refusal but an undecodable edit input is still decided here, at once. Without it, a
            success's body is the JSON dict.
        """
        fields: dict[str, Any] = {}
        image: bytes | None = None
        try:
            path = path.split("?", 1)[0].rstrip("/")
            if path not in (GENERATIONS_PATH, EDITS_PATH):
                raise Refusal(404, "404", "Resource not found")
            if not self._authorised(headers):
                raise Refusal(
                    401,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                    "provide a valid key for an active subscription and use a correct regional API "
                    "endpoint for your resource.",
                )
            editing = path == EDITS_PATH
            fields, image = self._parse(headers, raw, editing)
            reply = self._serve(fields, image, editing)
            if not draw_later:
                reply = Reply(reply.status, reply.drawn().body.as_json(), reply.headers, reply.delay)
            return reply, fields, image
        except Refusal as refusal:
            return refusal.reply, fields, image

    def _serve(self, fields: Mapping[str, Any], image: bytes | None, editing: bool) -> Reply:
        deployment = str(fields.get("model") or "")
        model = self.deployments.get(deployment)
        if model is None:
            raise Refusal(
                404,
                "DeploymentNotFound",
                f"The API deployment {deployment!r} for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        wait = self.limiter.admit(deployment)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise Refusal(
                429,
                "429",
                f"Requests to the images Operation under MAI API have exceeded the rate limit of your "
                f"current tier. Please retry after {seconds} seconds.",
                headers={"Retry-After": str(seconds), "retry-after-ms": str(int(wait * 1000))},
            )
        prompt = self._check_fields(fields, model, editing)
        if editing:
            self._image_ok(image)
            source = image or b""

            def draw() -> SuccessBody:
                try:
                    png = render.render_edit(source, prompt, model)
                except Exception:
                    raise Refusal(400, "invalid_image_format", "The image could not be decoded.") from None
                return self._success_body(png, prompt, model, source)
        else:
            width, height = render.generation_size(int(fields["width"]), int(fields["height"]))

            def draw() -> SuccessBody:
                return self._success_body(
                    render.render_generation(prompt, width, height, model), prompt, model, None
                )

        return Reply(200, None, delay=self._latency(), draw=draw)

    def _latency(self) -> float:
        if isinstance(self.latency, tuple):
            with self._random_lock:
                return self._random.uniform(*self.latency)
        return float(self.latency)

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        key = headers.get("api-key")
        if key:
            return self.api_key is None or key == self.api_key
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    @staticmethod
    def _parse(headers: Mapping[str, str], raw: bytes, editing: bool) -> tuple[dict[str, Any], bytes | None]:
        content_type = headers.get("content-type", "")
        if not editing:
            if "json" not in content_type:
                raise Refusal(415, "UnsupportedMediaType", "Generations take a JSON body (application/json).")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refusal(400, "invalid_request_error", "The request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise Refusal(400, "invalid_request_error", "The request body must be a JSON object.")
            return body, None
        if "multipart/form-data" not in content_type:
            raise Refusal(415, "UnsupportedMediaType", "Edits take a multipart/form-data body.")
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                payload = b""
            if name == "image":
                if image is None:
                    image = payload
                    fields["image_content_type"] = part.get_content_type()
            elif name:
                fields[str(name)] = payload.decode("utf-8", "replace")
        return fields, image

    def _check_fields(self, fields: Mapping[str, Any], model: str, editing: bool) -> str:
        refused = sorted(REFUSED_PARAMS & set(fields))
        if refused:
            raise Refusal(
                400,
                "unsupported_parameter",
                f"Model does not support request parameter supplied: '{refused[0]}'.",
            )
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise Refusal(
                400, "invalid_request_value", "'prompt' is required and must be a non-empty string."
            )
        if editing:
            if model not in EDIT_MODELS:
                raise Refusal(
                    400,
                    "OperationNotSupported",
                    f"The model {model} does not support image edits; use a MAI-Image-2.5 or "
                    "MAI-Image-2.5-Flash deployment.",
                )
            if fields.get("image_content_type") is None:
                raise Refusal(400, "invalid_request_value", "'image' file part is required for edits.")
        else:
            for name in ("width", "height"):
                value = fields.get(name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise Refusal(
                        400, "invalid_request_value", f"'{name}' is required and must be an integer."
                    )
                if value < MIN_SIDE:
                    raise Refusal(
                        400,
                        "unsupported_request_value",
                        f"Model does not support request parameter value supplied: '{name}' must be at "
                        f"least {MIN_SIDE} pixels.",
                    )
            if fields["width"] * fields["height"] > MAX_PIXELS:
                raise Refusal(
                    400,
                    "unsupported_request_value",
                    "Model does not support request parameter value supplied: 'width' * 'height' must be "
                    f"at most {MAX_PIXELS} pixels.",
                )
        lowered = prompt.lower()
        for term in self.blocked_terms:
            if term in lowered:
                raise Refusal(
                    400,
                    "content_safety_violation",
                    "Response content blocked by label 'MultiSeverity_ViolenceScore'.",
                    details=f"The prompt matched the emulator's blocked term {term!r}.",
                )
        return prompt

    @staticmethod
    def _image_ok(image: bytes | None) -> None:
        if not image or not (image.startswith(b"\x89PNG\r\n\x1a\n") or image.startswith(b"\xff\xd8\xff")):
            raise Refusal(400, "invalid_image_format", "The image must be a PNG or JPEG file.")
        if not render.readable(image):  # the header only: cheap, so a bad input is refused at once
            raise Refusal(400, "invalid_image_format", "The image could not be decoded.")

    @staticmethod
    def _success_body(png: bytes, prompt: str, model: str, image: bytes | None) -> SuccessBody:
        width, height = struct.unpack(">II", png[16:24])
        usage = {
            "num_input_text_tokens": max(1, len(prompt) // 4),
            "num_input_image_tokens": (len(image) // 1024 if image else 0),
            "num_output_tokens": width * height // 1024,
        }
        fields = {"created": int(time.time()), "model": model, "size": f"{width}x{height}", "usage": usage}
        return SuccessBody(fields, png)
