"""A hostile endpoint, row by row: what the client must survive, through the hook and the operator
(the sync transport) and through the asyncio client (the async transport, as the trigger sends)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

import pytest

from airflow_provider_mai.exceptions import (
    MaiBadRequestError,
    MaiConfigurationError,
    MaiError,
    MaiResponseError,
    MaiResponseTooLargeError,
    MaiTransientError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from tests.support.connections import API_KEY
from tests.support.helpers import SleepRecorder, files_in, task_context
from tests.support.hostile_answers import Answer, bomb, drip, head_then
from tests.support.servers import RawServer, http_answer
from tests.support.transports import Transport

#: A drip row's connection: a one-second deadline, one attempt.
DRIP = {"timeout": 1, "max_retries": 0}


def redirect(status: int) -> Answer:
    def answer(conn: socket.socket, request: bytes) -> None:
        # The target is "another host" on plain http, with a token in its query.
        location = f"http://127.0.0.2:{_OTHER.port}/collect?token=stolen-{status}"
        conn.sendall(http_answer(status, b"moved", {"Location": location}))

    return answer


def endless(conn: socket.socket, request: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    chunk = b"A" * 65536
    for _ in range(8192):  # at most 512 MiB, should the client never give up
        conn.sendall(chunk)


def huge_error(conn: socket.socket, request: bytes) -> None:
    message = "the service says no\n\t" * 250_000  # ~5 MB with raw newlines
    body = json.dumps({"error": {"code": "BadRequest", "message": message}}).encode()
    conn.sendall(http_answer(400, body, {"Content-Type": "application/json"}))


@dataclass
class Row:
    """A misbehaving server and what must come of it."""

    answer: Answer
    error: type[MaiError]
    words: str
    attempts: int
    extra: dict = field(default_factory=dict)
    #: The call must end within this many seconds (the server would hold it much longer).
    within: float | None = None


ROWS: dict[str, Row] = {
    # 1. Redirects are never followed: the key and the prompt stay here.
    **{
        f"redirect-{status}": Row(redirect(status), MaiConfigurationError, "redirect to 127.0.0.2", 1)
        for status in (301, 302, 303, 307, 308)
    },
    # 5. Caps on what a body may cost, whatever the server claims.
    "length-3-GB-ten-bytes": Row(
        head_then(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000000\r\n", b"0123456789"),
        MaiResponseTooLargeError,
        "larger than 1,048,576 bytes",
        1,
    ),
    "length-50-GB": Row(
        head_then(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000000\r\n"),
        MaiResponseTooLargeError,
        "larger",
        1,
    ),
    "no-length-endless": Row(endless, MaiResponseTooLargeError, "max_response_mb", 1),
    "gzip-bomb": Row(bomb("gzip"), MaiResponseTooLargeError, "larger than", 1),
    "deflate-bomb": Row(bomb("deflate"), MaiResponseTooLargeError, "larger than", 1),
    # 6. The timeout bounds the whole answer, not each read.
    "drip-body-with-length": Row(drip("length"), MaiTransientError, "within 1 s", 1, DRIP, within=15),
    "drip-body-chunked": Row(drip("chunked"), MaiTransientError, "within 1 s", 1, DRIP, within=15),
    "drip-headers": Row(drip("headers"), MaiTransientError, "within 1 s", 1, DRIP, within=15),
    # 7. The service's words are quoted on one line, trimmed.
    "error-text-5-MB": Row(huge_error, MaiBadRequestError, "the service says no", 1),
    # 8. Broken HTTP is a MaiResponseError (retried once here), never a raw ValueError.
    "length-superscript-digit": Row(
        head_then("HTTP/1.1 200 OK\r\nContent-Length: ²\r\n".encode()), MaiResponseError, "Content-Length", 2
    ),
    "length-arabic-digits": Row(
        head_then("HTTP/1.1 200 OK\r\nContent-Length: ١٢\r\n".encode(), b"{}" * 6),
        MaiResponseError,
        "Content-Length",
        2,
    ),
    "length-negative": Row(
        head_then(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n"), MaiResponseError, "Content-Length", 2
    ),
    "encoding-not-asked-for": Row(
        head_then(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n", b"{}"),
        MaiResponseError,
        "content encoding",
        2,
    ),
    "cut-off-body": Row(
        head_then(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n", b"0123456789"),
        MaiTransientError,
        "cut off before its announced end",
        2,
    ),
}


class _OtherHost:
    """The "another host" a redirect points to (127.0.0.2): it must never hear from us."""

    server: RawServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.url.rsplit(":", 1)[1])


_OTHER = _OtherHost()


@pytest.fixture
def other_host():
    with RawServer(lambda conn, request: conn.sendall(http_answer(200, b"{}")), host="127.0.0.2") as server:
        _OTHER.server = server
        yield server
        _OTHER.server = None


def _call(via: str, conn_id: str, tmp_path, recorder: SleepRecorder) -> None:
    if via == "async":
        Transport("async").send(conn_id, sleep=recorder)
        return
    if via == "hook":
        MaiHook(conn_id, sleep=recorder).generate_image("a prompt", width=768, height=768)
        return
    op = MaiGenerateImageOperator(
        task_id="generate", prompt="a prompt", width=768, height=768, output_path=f"{tmp_path}/out/"
    )
    op.mai_conn_id = conn_id
    op.hook = MaiHook(conn_id, sleep=recorder)
    op.execute(task_context("generate"))


@pytest.mark.parametrize("via", ["hook", "operator", "async"])
@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_hostile_endpoint(connect, other_host, tmp_path, capfd, via, row: Row):
    with RawServer(row.answer) as server:
        conn_id = connect(
            "mai_hostile",
            host=server.url,
            extra={"max_retries": 1, "retry_base_delay": 0, "max_response_mb": 1, "timeout": 10, **row.extra},
        )
        recorder = SleepRecorder()
        started = time.monotonic()
        with pytest.raises(row.error, match=row.words) as info:
            _call(via, conn_id, tmp_path, recorder)
        elapsed = time.monotonic() - started
        seen = len(server.requests)
    error = info.value
    assert seen == row.attempts == error.attempts
    assert other_host.requests == []  # nothing - no key, no prompt - reached the other host
    assert files_in(tmp_path / "out") == []
    text = str(error)
    assert "\n" not in text and len(text) < 1200
    assert "stolen" not in text  # a redirect is named by its host, never its query
    logs = capfd.readouterr()
    assert API_KEY not in text + repr(error) + logs.out + logs.err
    if row.within is not None:
        assert elapsed < row.within, f"took {elapsed:.1f} s"


def test_a_redirect_is_permanent_for_airflow_too(connect, other_host, transport):
    from airflow.sdk.exceptions import AirflowFailException

    with RawServer(redirect(307)) as server, pytest.raises(MaiConfigurationError) as info:
        transport.send(connect(host=server.url))
    assert isinstance(info.value, AirflowFailException)
    assert info.value.status_code == 307
    assert "set the connection host" in str(info.value)
