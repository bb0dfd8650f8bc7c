"""What is retried, after how long (client/retry.py): transient statuses, hints, backoff, billed retries."""

from __future__ import annotations

import json
import logging
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiRateLimitError,
    MaiTransientError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from airflow_provider_mai.validation import png_size
from tests.support.helpers import SleepRecorder, task_context


# -- transient errors and retries -------------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_statuses_are_retried_to_success(hook, emulator, status):
    emulator.inject(Fault(status=status, body="<html><body>gateway</body></html>"), times=2)
    image = hook.generate_image("x", width=768, height=768)
    assert image.width == 768
    assert [r.status for r in emulator.requests] == [status, status, 200]


def test_retries_run_out_with_attempt_count_and_last_status(hook, emulator):
    emulator.inject(Fault(status=503), times=10)
    with pytest.raises(MaiTransientError) as info:
        hook.generate_image("x")
    error = info.value
    assert error.attempts == 4  # max_retries=3 in the test connection
    assert error.status_code == 503
    assert "4 attempt" in str(error)
    assert not isinstance(error, AirflowFailException)
    assert len(emulator.requests) == 4


def test_429_honours_retry_after_seconds(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=1))
    hook.generate_image("x", width=768, height=768)
    assert len(recorder.waits) == 1
    assert 1.0 <= recorder.waits[0] <= 1.15  # the hint, plus at most 10 % (+50 ms) of spread
    assert [r.status for r in emulator.requests] == [429, 200]


def test_429_honours_retry_after_ms_first(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=30, retry_after_ms=250))
    hook.generate_image("x", width=768, height=768)
    assert len(recorder.waits) == 1
    assert 0.25 <= recorder.waits[0] < 0.4


def test_429_honours_retry_after_http_date(hook, emulator, recorder):
    emulator.inject(Fault(status=429, retry_after=formatdate(time.time() + 5, usegmt=True)))
    hook.generate_image("x", width=768, height=768)
    assert 3.0 <= recorder.waits[0] <= 6.5


def test_429_without_hint_backs_off_with_capped_jitter(connect, emulator, recorder):
    hook = MaiHook(
        connect(extra={"max_retries": 6, "retry_base_delay": 0.01, "retry_max_delay": 0.04}), sleep=recorder
    )
    emulator.inject(Fault(status=429), times=10)
    with pytest.raises(MaiRateLimitError) as info:
        hook.generate_image("x")
    assert info.value.attempts == 7
    assert len(recorder.waits) == 6
    assert all(0 <= w <= 0.04 for w in recorder.waits)
    assert "quota" in str(info.value)


@pytest.mark.parametrize(
    "fault",
    [Fault(drop=True), Fault(reset=True), Fault(truncate=True)],
    ids=["dropped", "reset", "truncated"],
)
def test_broken_connections_are_retried(hook, emulator, fault):
    emulator.inject(fault)
    image = hook.generate_image("x", width=768, height=768)
    assert png_size(image.png) == (768, 768)
    assert len(emulator.requests) == 2


def test_connection_refused_is_transient_and_counted(connect, free_port):
    hook = MaiHook(connect(host=f"http://127.0.0.1:{free_port}", extra={"max_retries": 2}))
    with pytest.raises(MaiTransientError, match="nothing answered") as info:
        hook.generate_image("x")
    assert info.value.attempts == 3


def test_answer_slower_than_read_timeout_is_retried(connect, emulator):
    # A deadline a busy machine still meets for a real answer; the fault waits twice as long.
    hook = MaiHook(connect(extra={"timeout": 2.0}), sleep=SleepRecorder())
    emulator.inject(Fault(status=None, delay=4.0))
    image = hook.generate_image("x", width=768, height=768)
    assert image.width == 768
    # At least the slow one and its retry; more only if a loaded machine also missed the deadline.
    assert len(emulator.requests) >= 2
    assert image.attempts == len(emulator.requests)


# -- 15. retries that may have been billed ------------------------------------------------------------
def test_a_retry_after_the_request_was_sent_is_logged_as_possibly_billed_and_counted(
    connect, emulator, tmp_path, caplog, capfd
):
    connect(extra={"timeout": 2.0})
    emulator.inject(Fault(status=None, delay=4.0))  # the service got it all, then went quiet
    op = MaiGenerateImageOperator(task_id="g", prompt="p", width=768, height=768, output_path=f"{tmp_path}/")
    op.hook = MaiHook(op.mai_conn_id, sleep=SleepRecorder())
    caplog.set_level(logging.WARNING)
    result = op.execute(task_context())
    logs = caplog.text + capfd.readouterr().out
    assert "may have billed it" in logs
    # Every request sent is counted (2, or more if a loaded machine also missed a later deadline).
    assert result["attempts"] == len(emulator.requests) >= 2
    sidecar = json.loads(Path(result["sidecar_uri"].removeprefix("file://")).read_text())
    assert sidecar["attempts"] == result["attempts"]


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        (Fault(status=503), 1),  # reached the service: may have been billed, so not retried
        (Fault(truncate=True), 1),
        (Fault(status=429, retry_after=0), 2),  # refused before any work: retried as ever
        (Fault(status=408), 2),
    ],
    ids=["503", "cut-off-200", "429", "408"],
)
def test_retry_sent_requests_false_stops_only_the_retries_that_may_be_billed(
    connect, emulator, fault, attempts
):
    hook = MaiHook(connect(extra={"retry_sent_requests": False}), sleep=SleepRecorder())
    emulator.inject(fault)
    if attempts == 1:
        with pytest.raises(MaiTransientError, match="retry_sent_requests=false") as info:
            hook.generate_image("x", width=768, height=768)
        assert info.value.possibly_billed
    else:
        assert hook.generate_image("x", width=768, height=768).attempts == 2
    assert len(emulator.requests) == attempts


def test_a_refused_connection_is_retried_even_with_retry_sent_requests_false(connect, free_port):
    hook = MaiHook(
        connect(
            host=f"http://127.0.0.1:{free_port}", extra={"retry_sent_requests": "false", "max_retries": 2}
        ),
        sleep=SleepRecorder(),
    )
    with pytest.raises(MaiTransientError, match="nothing answered") as info:
        hook.generate_image("x", width=768, height=768)
    assert info.value.attempts == 3
    assert not info.value.possibly_billed
