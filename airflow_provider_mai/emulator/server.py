"""A local stand-in for the MAI image API: HTTP, fault injection and life cycle.

The service's rules live in :mod:`~airflow_provider_mai.emulator.protocol`; this module serves
them on a loopback port, records every request, and lets tests inject faults (a status, a dropped
or reset connection, a truncated or malformed body, a delay) into the next requests. It is what
every user's CI runs, so it is bounded itself: request bodies (64 MiB, a valid ``Content-Length``
required), connections served at once (more wait in the listen backlog), idle connections (closed
after ``idle_timeout``), and images drawn at once: a success waits out its latency holding no
image, a small pool of render threads draws it, and its JSON is streamed in 64 KiB pieces, so a
burst of answers costs a few images' memory, not one per connection. It stops promptly even when
every slot is held.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.emulator.protocol import (
    DEFAULT_BLOCKED_TERMS,
    EDIT_MODELS,
    MaiProtocol,
    RateLimiter,
    Refusal,
    Reply,
    SuccessBody,
)

if TYPE_CHECKING:
    import ssl
    from concurrent.futures import ThreadPoolExecutor

MAX_BODY_BYTES = 64 * 1024 * 1024
#: Seconds an open connection may sit without sending a byte before it is closed.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Connections served at once (a thread each): twice the 256 a deferrable batch holds in flight,
#: so a second client (a health check, a sync worker) is never queued behind it.
DEFAULT_MAX_CONCURRENCY = 512
#: Connections the kernel keeps waiting to be accepted once every slot is taken. Past it, Linux
#: answers new connections with SYN cookies and resets; it caps the value at ``net.core.somaxconn``.
DEFAULT_BACKLOG = 1024
#: Images drawn at once. Drawing is CPU-bound (~0.13 CPU-s and ~25 MB of pixels for 1 MP), so more
#: threads than this add memory, not speed, on the small machines CI runs on.
DEFAULT_MAX_RENDERS = 4
_SOMAXCONN = "/proc/sys/net/core/somaxconn"


def listen_backlog_cap() -> int | None:
    """The kernel's cap on a listen backlog (Linux ``net.core.somaxconn``); None where unknown."""
    try:
        with open(_SOMAXCONN) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _encode(body: Any) -> tuple[bytes, str]:
    """The bytes and content type a reply body is sent as (a :class:`SuccessBody` is streamed)."""
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode(), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/html" if body.lstrip().startswith("<") else "text/plain"
    return body or b"", "application/octet-stream"


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

    def reply(self) -> Reply:
        """The answer this fault gives instead of the service's."""
        status = int(self.status or 500)
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(self.retry_after_ms)
        body = self.body
        if body is None:
            body = {"error": {"code": str(status), "message": f"Injected fault: HTTP {status}."}}
        return Reply(status, body, headers)


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
    #: When its answer was sent, or its connection dropped (wall-clock seconds); None until then.
    answered: float | None = None

    @property
    def deployment(self) -> str | None:
        """The ``model`` field of the request."""
        value = self.fields.get("model")
        return str(value) if value is not None else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], emulator: MaiEmulator, max_concurrency: int, backlog: int
    ) -> None:
        self.emulator = emulator
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.request_queue_size = backlog  # what server_activate() passes to listen()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bounded: at most max_concurrency connections are served at once; more wait in the backlog.
        # The wait polls the stop flag, so a full house never keeps the emulator from stopping.
        while not self._slots.acquire(timeout=0.05):
            if self.emulator._stopping.is_set():
                self.shutdown_request(request)
                return
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
    # Headers and body go out in separate writes; with Nagle on, the body of every answer after the
    # first on a kept-alive connection waited for the client's delayed ACK (~40 ms on Linux), which
    # made pooled clients look slower than fresh connections (bench/per_call.py).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.emulator.idle_timeout)  # a silent client is let go

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/healthz", "/health"):
            self.send(Reply(200, {"status": "ok", "deployments": self.server.emulator.deployments}))
        else:
            self.send(Reply(404, {"error": {"code": "404", "message": "Resource not found"}}))

    def do_POST(self) -> None:
        self.server.emulator._handle(self)

    def send(self, reply: Reply, truncate: bool = False) -> None:
        streamed = reply.body if isinstance(reply.body, SuccessBody) else None
        if streamed is not None:
            payload, content_type, length = b"", "application/json", len(streamed)
        else:
            payload, content_type = _encode(reply.body)
            length = len(payload)
        request_id = str(uuid.uuid4())
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("x-ms-request-id", request_id)
        self.send_header("apim-request-id", request_id)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        limit = length // 2 if truncate else length
        if streamed is not None:
            for piece in streamed.chunks(limit):
                self.wfile.write(piece)
        else:
            self.wfile.write(payload[:limit])
        if truncate:
            self.wfile.flush()
            self.close_connection = True


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
    :param max_concurrency: connections served at once, a thread each (an idle keep-alive
        connection holds one until ``idle_timeout``); more wait in the listen backlog.
    :param backlog: connections the kernel holds waiting to be accepted while every slot is taken
        (the ``listen()`` backlog; Linux caps it at ``net.core.somaxconn``, see
        :func:`listen_backlog_cap`). Past it, new connections are reset.
    :param max_renders: images drawn at once, after their latency: a burst of answers costs this
        many images' memory, the others wait their turn.
    :param fault_rate: share of requests (0-1) answered with a random transient fault from
        ``chaos_faults`` when no injected fault is queued: a service having a bad day.
    :param chaos_faults: the faults ``fault_rate`` draws from (default ``CHAOS_FAULTS``).
    :param seed: seed for the fault and latency draws, for repeatable runs.
    :param idle_timeout: seconds a connection may stay silent before it is closed.
    :param ssl_context: serve https with this server-side context (e.g. to test a connection's
        ``ca_bundle`` against a private CA); plain http when None.
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
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        fault_rate: float = 0.0,
        chaos_faults: Iterable[Fault] = CHAOS_FAULTS,
        seed: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        verbose: bool = False,
        backlog: int = DEFAULT_BACKLOG,
        max_renders: int = DEFAULT_MAX_RENDERS,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        for name, value in (
            ("max_concurrency", max_concurrency),
            ("backlog", backlog),
            ("max_renders", max_renders),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        self.protocol = MaiProtocol(
            deployments=deployments,
            api_key=api_key,
            rpm=rpm,
            latency=latency,
            blocked_terms=blocked_terms,
            seed=None if seed is None else seed + 1,
        )
        self.fault_rate = fault_rate
        self.chaos_faults = tuple(chaos_faults)
        self._random = random.Random(seed)
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.verbose = verbose
        self.requests: list[RecordedRequest] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._host, self._port = host, port
        self._max_concurrency, self._backlog, self._max_renders = max_concurrency, backlog, max_renders
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._renders: ThreadPoolExecutor | None = None

    # -- what the protocol knows ----------------------------------------------------------------

    @property
    def deployments(self) -> dict[str, str]:
        """Deployment name -> model name."""
        return self.protocol.deployments

    @property
    def api_key(self) -> str | None:
        """The accepted API key (None: any non-empty key); can be changed while it runs."""
        return self.protocol.api_key

    @api_key.setter
    def api_key(self, value: str | None) -> None:
        self.protocol.api_key = value

    @property
    def rpm(self) -> int | None:
        """Requests per minute allowed per deployment (None: unlimited)."""
        return self.protocol.limiter.rpm

    @rpm.setter
    def rpm(self, value: int | None) -> None:
        self.protocol.limiter = RateLimiter(value)

    @property
    def max_concurrency(self) -> int:
        """Connections served at once."""
        return self._max_concurrency

    @property
    def backlog(self) -> int:
        """The listen backlog asked for (the kernel may cap it: :func:`listen_backlog_cap`)."""
        return self._backlog

    @property
    def max_renders(self) -> int:
        """Images drawn at once."""
        return self._max_renders

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running emulator, e.g. ``http://127.0.0.1:8790``."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        name = f"[{name}]" if ":" in name else name
        return f"{'https' if self.ssl_context else 'http'}://{name}:{port}"

    def start(self) -> MaiEmulator:
        """Bind and serve in a background thread; it accepts requests when this returns."""
        from concurrent.futures import ThreadPoolExecutor

        self._stopping.clear()
        self._renders = ThreadPoolExecutor(self._max_renders, thread_name_prefix="mai-emulator-render")
        self._server = _Server((self._host, self._port), self, self._max_concurrency, self._backlog)
        if self.ssl_context is not None:
            # The handshake happens on the first read, in the connection's own thread.
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="mai-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; in-flight delays end at once, unsent answers are dropped."""
        self._stopping.set()
        if self._renders is not None:
            # Answers waiting for a render thread give up at once; a render under way finishes.
            self._renders.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = self._renders = None

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
        self.rpm = self.rpm

    def summary(self) -> str:
        """One line: how many requests arrived and how they were answered (what was spent)."""
        with self._lock:
            statuses = collections.Counter(r.status for r in self.requests)
        made = statuses.get(200, 0)
        others = ", ".join(
            f"{count} x {status or 'dropped'}"
            for status, count in sorted(
                ((s, c) for s, c in statuses.items() if s != 200), key=lambda item: str(item[0])
            )
        )
        return f"MAI emulator stopped after {sum(statuses.values())} request(s): {made} image(s) made" + (
            f", {others}" if others else ""
        )

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

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self.fault_rate and self._random.random() < self.fault_rate:
                return self._random.choice(self.chaos_faults)
        return None

    def _draw(self, reply: Reply) -> Reply | None:
        """Draw a reply's image in a render thread; None if the emulator is stopping.

        Drawing needs ~25 MB of pixels for 1 MP: only ``max_renders`` of them exist at once.
        """
        from concurrent.futures import CancelledError

        def work() -> Reply:
            try:
                return reply.drawn()
            except Refusal as refusal:  # an edit input whose pixels cannot be decoded
                return refusal.reply

        pool = self._renders
        if pool is None or self._stopping.is_set():
            return None
        try:
            # Blocks without polling (hundreds of waiting threads cost nothing); stop() cancels.
            return pool.submit(work).result()
        except (CancelledError, RuntimeError):  # cancelled, or submitted after shutdown
            return None

    def _handle(self, handler: _Handler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RecordedRequest("POST", handler.path, headers, {}, fault=self._next_fault())
        with self._lock:
            self.requests.append(record)
        try:
            self._answer(handler, headers, record)
        finally:
            record.answered = time.time()

    def _answer(self, handler: _Handler, headers: dict[str, str], record: RecordedRequest) -> None:
        length_text = headers.get("content-length", "0").strip()
        if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > MAX_BODY_BYTES:
            # A missing, negative or huge length: refuse without reading, and close the connection.
            record.status = 413 if length_text.isdigit() else 400
            handler.close_connection = True
            handler.send(
                Reply(
                    record.status,
                    {
                        "error": {
                            "code": "InvalidRequestLength",
                            "message": f"A valid Content-Length up to {MAX_BODY_BYTES} bytes is required.",
                        }
                    },
                )
            )
            return
        length = int(length_text)
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
                reply = fault.reply()
                record.status = reply.status
                handler.send(reply)
                return
        reply, record.fields, record.image = self.protocol.answer(handler.path, headers, raw, draw_later=True)
        self._wait(reply.delay)  # the service "works"; nothing large is held meanwhile
        if reply.draw is not None:
            drawn = self._draw(reply)
            if drawn is None:  # stopping: no answer
                record.status = 0
                handler.close_connection = True
                return
            reply = drawn
        record.status = reply.status
        handler.send(reply, truncate=bool(fault and fault.truncate))
