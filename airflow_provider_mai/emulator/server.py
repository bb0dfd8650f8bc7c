"""A local stand-in for the MAI image API, faithful to the documented and observed behaviour.

It answers ``POST /mai/v1/images/generations`` and ``/mai/v1/images/edits`` like a Foundry resource
does: API key or bearer auth (401), deployment lookup (404), the documented size rules and the
observed error bodies (400), content filtering (400 ``content_safety_violation``), a per-deployment
requests-per-minute limit over a sliding minute (429 with ``Retry-After``), request-id headers, and
success bodies with ``created``, ``model``, ``size``, ``usage`` and ``data[0].b64_json``. Tests can
inject faults (a status, a dropped or reset connection, a truncated or malformed body, a delay)
into the next requests and read the log of what was received.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_provider_mai.emulator import render

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
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Fault:
    """What to do instead of (or before) answering normally.

    :param status: HTTP status to answer with; None answers normally (after ``delay``).
    :param body: the body: a dict (sent as JSON), str or bytes; None gives an Azure-style error body.
    :param headers: extra response headers.
    :param retry_after: value of a ``Retry-After`` header (seconds, or an HTTP date string).
    :param retry_after_ms: value of a ``retry-after-ms`` header.
    :param delay: seconds to wait before answering (or dropping).
    :param drop: close the connection without answering.
    :param reset: reset the connection (TCP RST) without answering.
    :param truncate: send a normal 200 success but cut the body in half and close.
    """

    status: int | None = 500
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: str | float | None = None
    retry_after_ms: float | None = None
    delay: float = 0.0
    drop: bool = False
    reset: bool = False
    truncate: bool = False


#: What ``fault_rate`` draws from: the transient failures a busy service and its gateways produce.
CHAOS_FAULTS: tuple[Fault, ...] = (
    Fault(status=429, retry_after=1),
    Fault(status=429),
    Fault(status=500),
    Fault(status=502, body="<html><body><h1>502 Bad Gateway</h1></body></html>"),
    Fault(status=503, body=b""),
    Fault(status=408),
    Fault(drop=True),
    Fault(reset=True),
    Fault(truncate=True),
)


@dataclass
class RecordedRequest:
    """One request as the emulator received it."""

    method: str
    path: str
    headers: dict[str, str]
    fields: dict[str, Any]
    image: bytes | None = None
    status: int | None = None
    fault: Fault | None = None
    #: When the request arrived (wall-clock seconds), e.g. to check how requests were paced.
    received: float = field(default_factory=time.time)

    @property
    def deployment(self) -> str | None:
        """The ``model`` field of the request."""
        value = self.fields.get("model")
        return str(value) if value is not None else None


class _Answer(Exception):
    """Raised inside request handling to answer with an error at once."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **more: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "message": message, **more}}
        self.headers = dict(headers or {})


class _RateLimiter:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: MaiEmulator, max_concurrency: int) -> None:
        self.emulator = emulator
        self._slots = threading.BoundedSemaphore(max_concurrency)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bounded: at most max_concurrency connections are served at once; more wait in the backlog.
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "mai-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/healthz", "/health"):
            self._send(200, {"status": "ok", "deployments": self.server.emulator.deployments})
        else:
            self._send(404, {"error": {"code": "404", "message": "Resource not found"}})

    def do_POST(self) -> None:
        self.server.emulator._handle(self)

    def _send(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None, truncate: bool = False
    ) -> None:
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
            content_type = "application/json"
        elif isinstance(body, str):
            payload = body.encode()
            content_type = "text/html" if body.lstrip().startswith("<") else "text/plain"
        else:
            payload = body or b""
            content_type = "application/octet-stream"
        request_id = str(uuid.uuid4())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-request-id", request_id)
        self.send_header("apim-request-id", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if truncate:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class MaiEmulator:
    """The MAI image service on a local port. Use as a context manager, or ``start()``/``stop()``.

    :param host: interface to bind (loopback by default).
    :param port: port to bind; 0 picks a free one.
    :param api_key: the key to accept in the ``api-key`` header; None accepts any non-empty key.
        Any non-empty bearer token is accepted too.
    :param deployments: deployment name -> model name; default one per model (``DEFAULT_DEPLOYMENTS``).
    :param rpm: requests per minute allowed per deployment (None: unlimited).
    :param latency: seconds each successful answer takes, or a ``(low, high)`` range.
    :param blocked_terms: prompt fragments the content filter blocks.
    :param max_concurrency: connections served at once.
    :param fault_rate: share of requests (0-1) answered with a random transient fault from
        ``chaos_faults`` when no injected fault is queued: a service having a bad day.
    :param chaos_faults: the faults ``fault_rate`` draws from (default ``CHAOS_FAULTS``).
    :param seed: seed for the fault draws, for repeatable runs.
    :param verbose: log each request to stderr.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = "emulator-key",
        deployments: Mapping[str, str] | None = None,
        rpm: int | None = None,
        latency: float | tuple[float, float] = 0.0,
        blocked_terms: Iterable[str] = DEFAULT_BLOCKED_TERMS,
        max_concurrency: int = 64,
        fault_rate: float = 0.0,
        chaos_faults: Iterable[Fault] = CHAOS_FAULTS,
        seed: int | None = None,
        verbose: bool = False,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        self.fault_rate = fault_rate
        self.chaos_faults = tuple(chaos_faults)
        self._random = random.Random(seed)
        self.deployments = dict(deployments or DEFAULT_DEPLOYMENTS)
        for name, model in self.deployments.items():
            if model not in MODELS:
                raise ValueError(f"deployment {name!r}: unknown model {model!r}; one of {', '.join(MODELS)}")
        self.api_key = api_key
        self.latency = latency
        self.blocked_terms = tuple(t.lower() for t in blocked_terms)
        self.verbose = verbose
        self.requests: list[RecordedRequest] = []
        self._limiter = _RateLimiter(rpm)
        self._faults: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._host, self._port, self._max_concurrency = host, port, max_concurrency
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running emulator, e.g. ``http://127.0.0.1:8790``."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        name = f"[{name}]" if ":" in name else name
        return f"http://{name}:{port}"

    @property
    def rpm(self) -> int | None:
        """Requests per minute allowed per deployment (None: unlimited)."""
        return self._limiter.rpm

    @rpm.setter
    def rpm(self, value: int | None) -> None:
        self._limiter = _RateLimiter(value)

    def start(self) -> MaiEmulator:
        """Bind and serve in a background thread; it accepts requests when this returns."""
        self._stopping.clear()
        self._server = _Server((self._host, self._port), self, self._max_concurrency)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="mai-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; in-flight delays end at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> MaiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls --------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to each of the next ``times`` POST requests (queued after earlier faults)."""
        with self._lock:
            self._faults.extend([fault] * times)

    def reset(self) -> None:
        """Forget recorded requests, queued faults and rate-limit history."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
        self._limiter = _RateLimiter(self._limiter.rpm)

    def connection_uri(self, deployment: str | None = None) -> str:
        """A JSON Airflow connection (for ``AIRFLOW_CONN_<ID>``) pointing at this emulator.

        :param deployment: the connection's default deployment; by default the first one that
            supports edits, so that generate-then-edit pipelines work as they are.
        """
        if deployment is None:
            editing = [name for name, model in self.deployments.items() if model in EDIT_MODELS]
            deployment = (editing or list(self.deployments))[0]
        return json.dumps(
            {
                "conn_type": "mai",
                "host": self.url,
                "password": self.api_key or "any-key",
                "extra": {"deployment": deployment, "retry_base_delay": 0.05},
            }
        )

    # -- request handling -----------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _handle(self, handler: _Handler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RecordedRequest("POST", handler.path, headers, {})
        with self._lock:
            self.requests.append(record)
            if self._faults:
                record.fault = self._faults.popleft()
            elif self.fault_rate and self._random.random() < self.fault_rate:
                record.fault = self._random.choice(self.chaos_faults)
        status, body = 500, None
        extra_headers: dict[str, str] = {}
        try:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                raise _Answer(413, "RequestEntityTooLarge", "The request body is too large.")
            raw = handler.rfile.read(length) if length else b""
            fault = record.fault
            if fault is not None:
                self._wait(fault.delay)
                if fault.drop or fault.reset:
                    record.status = 0
                    if fault.reset:
                        handler.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    handler.close_connection = True
                    return
                if fault.status is not None and not fault.truncate:
                    status, body, extra_headers = self._fault_answer(fault)
                    record.status = status
                    handler._send(status, body, extra_headers)
                    return
            status, body, extra_headers = self._serve(handler.path, headers, raw, record)
        except _Answer as answer:
            status, body, extra_headers = answer.status, answer.body, answer.headers
        record.status = status
        handler._send(status, body, extra_headers, truncate=bool(record.fault and record.fault.truncate))

    @staticmethod
    def _fault_answer(fault: Fault) -> tuple[int, Any, dict[str, str]]:
        status = int(fault.status or 500)
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        body = fault.body
        if body is None:
            body = {"error": {"code": str(status), "message": f"Injected fault: HTTP {status}."}}
        return status, body, headers

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        key = headers.get("api-key")
        if key:
            return self.api_key is None or key == self.api_key
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _serve(
        self, path: str, headers: Mapping[str, str], raw: bytes, record: RecordedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        path = path.split("?", 1)[0].rstrip("/")
        if path not in ("/mai/v1/images/generations", "/mai/v1/images/edits"):
            raise _Answer(404, "404", "Resource not found")
        if not self._authorised(headers):
            raise _Answer(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API "
                "endpoint for your resource.",
            )
        editing = path.endswith("/edits")
        fields, image = self._parse(headers, raw, editing)
        record.fields, record.image = fields, image
        deployment = str(fields.get("model") or "")
        model = self.deployments.get(deployment)
        if model is None:
            raise _Answer(
                404,
                "DeploymentNotFound",
                f"The API deployment {deployment!r} for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        wait = self._limiter.admit(deployment)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise _Answer(
                429,
                "429",
                f"Requests to the images Operation under MAI API have exceeded the rate limit of your "
                f"current tier. Please retry after {seconds} seconds.",
                headers={"Retry-After": str(seconds), "retry-after-ms": str(int(wait * 1000))},
            )
        prompt = self._check_fields(fields, model, editing)
        if editing:
            self._image_ok(image)
            try:
                png = render.render_edit(image or b"", prompt, model)
            except Exception:
                raise _Answer(400, "invalid_image_format", "The image could not be decoded.") from None
        else:
            width, height = render.generation_size(int(fields["width"]), int(fields["height"]))
            png = render.render_generation(prompt, width, height, model)
        self._wait(self._latency())
        return 200, self._success_body(png, prompt, model, image), {}

    def _latency(self) -> float:
        if isinstance(self.latency, tuple):
            import random

            return random.uniform(*self.latency)
        return float(self.latency)

    @staticmethod
    def _parse(headers: Mapping[str, str], raw: bytes, editing: bool) -> tuple[dict[str, Any], bytes | None]:
        content_type = headers.get("content-type", "")
        if not editing:
            if "json" not in content_type:
                raise _Answer(415, "UnsupportedMediaType", "Generations take a JSON body (application/json).")
            try:
                body = json.loads(raw)
            except ValueError:
                raise _Answer(400, "invalid_request_error", "The request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise _Answer(400, "invalid_request_error", "The request body must be a JSON object.")
            return body, None
        if "multipart/form-data" not in content_type:
            raise _Answer(415, "UnsupportedMediaType", "Edits take a multipart/form-data body.")
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
            raise _Answer(
                400,
                "unsupported_parameter",
                f"Model does not support request parameter supplied: '{refused[0]}'.",
            )
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _Answer(
                400, "invalid_request_value", "'prompt' is required and must be a non-empty string."
            )
        if editing:
            if model not in EDIT_MODELS:
                raise _Answer(
                    400,
                    "OperationNotSupported",
                    f"The model {model} does not support image edits; use a MAI-Image-2.5 or "
                    "MAI-Image-2.5-Flash deployment.",
                )
            image = fields.get("image_content_type")
            if image is None:
                raise _Answer(400, "invalid_request_value", "'image' file part is required for edits.")
        else:
            for name in ("width", "height"):
                value = fields.get(name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _Answer(
                        400, "invalid_request_value", f"'{name}' is required and must be an integer."
                    )
                if value < render.MIN_SIDE:
                    raise _Answer(
                        400,
                        "unsupported_request_value",
                        f"Model does not support request parameter value supplied: '{name}' must be at "
                        f"least {render.MIN_SIDE} pixels.",
                    )
            if fields["width"] * fields["height"] > render.MAX_PIXELS:
                raise _Answer(
                    400,
                    "unsupported_request_value",
                    "Model does not support request parameter value supplied: 'width' * 'height' must be "
                    f"at most {render.MAX_PIXELS} pixels.",
                )
        lowered = prompt.lower()
        for term in self.blocked_terms:
            if term in lowered:
                raise _Answer(
                    400,
                    "content_safety_violation",
                    "Response content blocked by label 'MultiSeverity_ViolenceScore'.",
                    details=f"The prompt matched the emulator's blocked term {term!r}.",
                )
        return prompt

    @staticmethod
    def _image_ok(image: bytes | None) -> None:
        if not image or not (image.startswith(b"\x89PNG\r\n\x1a\n") or image.startswith(b"\xff\xd8\xff")):
            raise _Answer(400, "invalid_image_format", "The image must be a PNG or JPEG file.")

    def _success_body(self, png: bytes, prompt: str, model: str, image: bytes | None) -> dict[str, Any]:
        width, height = struct.unpack(">II", png[16:24])
        usage = {
            "num_input_text_tokens": max(1, len(prompt) // 4),
            "num_input_image_tokens": (len(image) // 1024 if image else 0),
            "num_output_tokens": width * height // 1024,
        }
        return {
            "created": int(time.time()),
            "model": model,
            "size": f"{width}x{height}",
            "usage": usage,
            "data": [{"b64_json": base64.b64encode(png).decode("ascii")}],
        }
