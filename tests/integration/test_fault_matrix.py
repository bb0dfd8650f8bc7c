"""The fault matrix: every way the service or the network can fail, over real HTTP, both transports.

Each row injects faults into the emulator, then sends: through ``MaiGenerateImageOperator`` with an
output folder (the sync transport) and through the asyncio client as the trigger sends (the async
one). It checks four things: how many attempts reached the server, how long the client chose to
wait (its sleep is recorded, not slept, so the suite stays fast and the figure is exact), the
outcome (a result, or a ``MaiError`` with the status and attempt count), and, for the operator,
what is left in the output folder: a complete PNG and its sidecar after a success, nothing at all
after a failure."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiAuthenticationError,
    MaiBadRequestError,
    MaiContentFilterError,
    MaiError,
    MaiNotFoundError,
    MaiRateLimitError,
    MaiResponseError,
    MaiTransientError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.models import GenerateRequest
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from airflow_provider_mai.validation import png_size
from tests.support.helpers import files_in, task_context

MAX_RETRIES = 3  # so a fault that never ends costs 4 attempts


HTML_GATEWAY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@dataclass
class Case:
    """One row: faults to inject (each for ``times`` requests), then what must happen."""

    faults: list[tuple[Fault, int]]
    attempts: int
    error: type[MaiError] | None = None  # None: the image must arrive
    status: int | None = None  # the status the error reports
    waited: tuple[float, float] = (0.0, 0.5)  # bounds on the total backoff the hook chose
    extra: dict = field(default_factory=dict)


IN_5_SECONDS = "<an HTTP date 5 s after the request>"  # made when the test runs, not at collection


def _resolve(fault: Fault) -> Fault:
    if fault.retry_after == IN_5_SECONDS:
        return replace(fault, retry_after=formatdate(time.time() + 5, usegmt=True))
    return fault


def _body(b64: str) -> dict:
    return {"data": [{"b64_json": b64}]}


CASES: dict[str, Case] = {
    # 429: server-driven waits are honoured exactly, then retried to success or reported.
    # Each hinted wait may gain up to 10 % (+50 ms) of spread so that told workers do not return together.
    "429-storm-retry-after-seconds": Case([(Fault(status=429, retry_after=2), 3)], 4, waited=(6.0, 6.8)),
    "429-storm-retry-after-http-date": Case(
        [(Fault(status=429, retry_after=IN_5_SECONDS), 2)], 3, waited=(7.0, 12.0)
    ),
    "429-retry-after-ms-wins": Case(
        [(Fault(status=429, retry_after=9, retry_after_ms=200), 1)], 2, waited=(0.2, 0.3)
    ),
    "429-without-hint": Case([(Fault(status=429), 2)], 3, waited=(0.0, 0.1)),
    "429-never-ends": Case(
        [(Fault(status=429, retry_after=1), 10)], 4, MaiRateLimitError, 429, waited=(3.0, 3.5)
    ),
    # Transient statuses, with the HTML or empty bodies gateways send.
    "408": Case([(Fault(status=408), 2)], 3),
    "500-html": Case([(Fault(status=500, body=HTML_GATEWAY_PAGE), 1)], 2),
    "502-html": Case([(Fault(status=502, body=HTML_GATEWAY_PAGE), 2)], 3),
    "503-empty": Case([(Fault(status=503, body=b""), 1)], 2),
    "504": Case([(Fault(status=504), 1)], 2),
    "503-never-ends": Case([(Fault(status=503), 10)], 4, MaiTransientError, 503),
    "mixed-408-502-429": Case(
        [(Fault(status=408), 1), (Fault(status=502), 1), (Fault(status=429, retry_after=1), 1)],
        4,
        waited=(1.0, 1.3),
    ),
    # The network: closed before an answer, reset, cut mid-body, too slow.
    "dropped-before-answer": Case([(Fault(drop=True), 2)], 3),
    "reset": Case([(Fault(reset=True), 1)], 2),
    "dropped-mid-body": Case([(Fault(truncate=True), 1)], 2),
    "dropped-mid-body-always": Case([(Fault(truncate=True), 10)], 4, MaiTransientError),
    "slower-than-read-timeout": Case([(Fault(status=None, delay=1.0), 1)], 2, extra={"timeout": 0.3}),
    # 200 answers that carry no usable image are retried (a gateway or a glitch), then reported.
    "200-html-page": Case([(Fault(status=200, body=HTML_GATEWAY_PAGE), 10)], 4, MaiResponseError, 200),
    "200-invalid-json": Case([(Fault(status=200, body="{'data': ["), 10)], 4, MaiResponseError, 200),
    "200-empty-data": Case([(Fault(status=200, body={"data": []}), 10)], 4, MaiResponseError, 200),
    "200-invalid-base64": Case([(Fault(status=200, body=_body("@@not base64@@")), 10)], 4, MaiResponseError),
    "200-not-a-png": Case(
        [(Fault(status=200, body=_body(base64.b64encode(b"\xff\xd8\xff\xe0JFIF").decode())), 10)],
        4,
        MaiResponseError,
    ),
    "200-html-once-then-ok": Case([(Fault(status=200, body=HTML_GATEWAY_PAGE), 1)], 2),
    # Permanent answers: one attempt, no wait, and Airflow must not retry the task either.
    "400": Case([(Fault(status=400), 1)], 1, MaiBadRequestError, 400),
    "400-content-filter": Case(
        [
            (
                Fault(
                    status=400,
                    body={
                        "error": {
                            "code": "content_safety_violation",
                            "message": "Response content blocked by label 'MultiSeverity_ViolenceScore'.",
                        }
                    },
                ),
                1,
            )
        ],
        1,
        MaiContentFilterError,
        400,
    ),
    "401": Case([(Fault(status=401), 1)], 1, MaiAuthenticationError, 401),
    "403": Case([(Fault(status=403), 1)], 1, MaiAuthenticationError, 403),
    "404": Case([(Fault(status=404), 1)], 1, MaiNotFoundError, 404),
}


PERMANENT = (MaiBadRequestError, MaiAuthenticationError, MaiNotFoundError)


def _context() -> dict:
    return task_context("generate", dag_id="faults")


def _run_operator(output: Path, waits: list[float]) -> None:
    """The sync transport, through the operator: a complete PNG and sidecar, or nothing at all."""
    op = MaiGenerateImageOperator(
        task_id="generate", prompt="a lighthouse", width=768, height=768, output_path=f"{output}/"
    )
    op.hook = MaiHook(op.mai_conn_id, sleep=waits.append)
    try:
        result = op.execute(_context())
    except MaiError:
        assert files_in(output) == []  # nothing written: no PNG, no sidecar, no temp file
        raise
    png = Path(result["uri"].removeprefix("file://")).read_bytes()
    assert png_size(png) == (768, 768)
    assert hashlib.sha256(png).hexdigest() == result["sha256"]
    sidecar = json.loads(Path(result["sidecar_uri"].removeprefix("file://")).read_text())
    assert sidecar["sha256"] == result["sha256"]
    assert len(files_in(output)) == 2  # the PNG and its sidecar: no temp files left behind


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fault_matrix(connect, emulator, tmp_path, transport, case: Case):
    conn_id = connect(extra={"max_retries": MAX_RETRIES, **case.extra})
    for fault, times in case.faults:
        emulator.inject(_resolve(fault), times=times)
    waits: list[float] = []

    def run() -> None:
        if transport.name == "sync":
            _run_operator(tmp_path / "out", waits)
            return
        request = GenerateRequest("a lighthouse", 768, 768, deployment="mai-image-2")
        image = transport.send(conn_id, request, sleep=waits.append)
        assert png_size(image.png) == (768, 768)

    if case.error is None:
        run()
    else:
        with pytest.raises(case.error) as info:
            run()
        error = info.value
        assert error.attempts == case.attempts
        if case.status is not None:
            assert error.status_code == case.status
        assert isinstance(error, AirflowFailException) == isinstance(error, PERMANENT)
        if case.attempts > 1:
            assert f"{case.attempts} attempt" in str(error)

    assert len(emulator.requests) == case.attempts
    assert len(waits) == case.attempts - 1
    low, high = case.waited
    assert low <= sum(waits) <= high, waits


def test_connection_refused_is_retried_then_reported(connect, free_port, transport):
    conn_id = connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 2})
    waits: list[float] = []
    with pytest.raises(MaiTransientError, match="connection refused") as info:
        transport.send(conn_id, sleep=waits.append)
    assert info.value.attempts == 3 and not info.value.possibly_billed
    assert len(waits) == 2
    assert "3 attempt" in str(info.value)


def test_retry_after_is_capped_so_a_hostile_hint_cannot_park_a_worker(connect, emulator, transport):
    conn_id = connect()
    emulator.inject(Fault(status=429, retry_after=86_400))
    waits: list[float] = []
    transport.send(conn_id, sleep=waits.append)
    assert len(waits) == 1
    assert 300.0 <= waits[0] <= 301.0
