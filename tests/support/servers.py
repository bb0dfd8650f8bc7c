"""Running the tests' real servers (storage emulators, Airflow's api-server, Redis) as child processes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest


def unavailable(reason: str) -> None:
    """Skip for a missing tool - or fail under CI (``CI=true``), which installs every tool.

    CI's oldest-Airflow run installs only the core test tools and sets ``MAI_ALLOW_SKIPS=1``.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not os.environ.get("MAI_ALLOW_SKIPS"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(ready: str | Callable[[], bool]) -> bool:
    if callable(ready):
        return ready()
    try:
        urllib.request.urlopen(ready, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # an HTTP error is an answer: the server is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def running(
    command: list[str],
    ready: str | Callable[[], bool] | None,
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    ready_within: float = 180.0,
    log: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Start ``command``, poll until it is ready (bounded), stop it afterwards.

    :param ready: a URL that answers once the server is up, or a check returning True then; None
        for a process that serves nothing (the caller checks readiness its own way).
    :param log: where its output goes (default: a new file in the temp folder).
    """
    log = log or Path(tempfile.mkstemp(prefix=f"mai-{name}-", suffix=".log")[1])
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(), env=env
        )
    try:
        deadline = time.monotonic() + ready_within
        while ready is not None:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-3000:]}")
            if _answers(ready):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} was not ready ({ready}) within {ready_within:.0f} s: {log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def airflow_command(*arguments: str) -> list[str]:
    """``airflow ARGUMENTS...`` with this interpreter (the project's virtualenv)."""
    return [sys.executable, "-m", "airflow", *arguments]


@contextlib.contextmanager
def airflow_api_server(env: Mapping[str, str], *, port: int | None = None) -> Iterator[str]:
    """``airflow api-server`` (one worker) on a loopback port; yields its URL once it is healthy."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = airflow_command("api-server", "--host", "127.0.0.1", "--port", str(port))
    env = {**env, "AIRFLOW__API__WORKERS": "1", "AIRFLOW__API__HOST": "127.0.0.1"}
    with running(command, f"{url}/api/v2/monitor/health", "api-server", env=env, ready_within=300):
        yield url


class LoopbackServer:
    """A threaded TCP server on a loopback address: one thread accepts, one serves each connection
    (:meth:`serve`, given by a subclass). :meth:`stop` ends every thread (bounded joins).

    :param host: 127.0.0.1 by default; 127.0.0.2 plays "another host" (also loopback).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading

        self.stopping = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)  # socketserver's default of 5 resets connections in a burst
        self._sock.settimeout(0.05)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def serve(self, conn: socket.socket) -> None:
        """Serve one accepted connection (it is closed afterwards)."""
        raise NotImplementedError

    def _accept(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve_and_close, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve_and_close(self, conn: socket.socket) -> None:
        with conn:
            self.serve(conn)

    def stop(self) -> None:
        self.stopping.set()
        self._sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawServer(LoopbackServer):
    """A loopback server that answers every connection with a test's own function, byte by byte.

    For what the emulator cannot do wrong on purpose: redirects, lying lengths, dripping bytes,
    compression bombs, huge error texts. ``answer(conn, request)`` gets the accepted socket and the
    request it sent (head and body, read up to its ``Content-Length``); it writes whatever it likes.
    Each request is recorded. An answer with a ``prepare()`` method has it called here, before the
    server starts: costly payloads are built before a client's deadline starts, not inside it.

    :param host: 127.0.0.1 by default; 127.0.0.2 plays "another host" (also loopback).
    """

    def __init__(self, answer, host: str = "127.0.0.1") -> None:  # type: ignore[no-untyped-def]
        if hasattr(answer, "prepare"):
            answer.prepare()
        self.answer = answer
        self.requests: list[bytes] = []
        super().__init__(host)
        self.url = f"http://{host}:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 1 << 16:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < min(length, 64 << 20):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                body += chunk
            self.requests.append(head + b"\r\n\r\n" + body)
            self.answer(conn, head + b"\r\n\r\n" + body)
        except OSError:
            pass  # the client gave up: that is often the point of the test


def http_answer(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a complete HTTP/1.1 answer with a correct Content-Length (unless given)."""
    fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


def redis_answers(port: int, password: str | None = None) -> bool:
    """Whether a Redis server on 127.0.0.1:``port`` answers PING (after AUTH with ``password``)."""
    command = (f"AUTH {password}\r\n" if password else "") + "PING\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(command.encode())
            answer = b""
            while answer.count(b"\r\n") < command.count("\r\n"):  # one answer line per command
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
            return answer.endswith(b"+PONG\r\n")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port, nothing persisted; yields its URL.

    Skips (fails under CI) when Debian's ``redis-server`` is not installed.
    """
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mai-redis-") as folder:
        config = Path(folder) / "redis.conf"
        # The password goes in a file only we can read, not on the command line where `ps` shows it.
        settings = f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {folder}\n'
        settings += f"requirepass {password}\n" if password else ""
        with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(settings)
        with running([binary, str(config)], lambda: redis_answers(port, password), "redis-server"):
            credentials = f":{password}@" if password else ""
            yield f"redis://{credentials}127.0.0.1:{port}/0"
