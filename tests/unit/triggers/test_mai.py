"""MaiImageTrigger run with asyncio against the emulator, on a real local filesystem."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_mai.exceptions import MaiBadRequestError
from airflow_provider_mai.models import GenerateRequest
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from airflow_provider_mai.triggers.mai import MaiImageTrigger, error_from_payload
from tests.conftest import API_KEY


def _trigger(tmp_path, **overrides):
    request = GenerateRequest("a red kite", 1024, 1024, deployment=overrides.pop("deployment", "mai-image-2"))
    kwargs = dict(
        mai_conn_id="mai_default",
        operation="generate",
        deployment=request.deployment,
        prompt=request.prompt,
        width=1024,
        height=1024,
        extra_params={},
        output_uri=str(tmp_path / "out.png"),
        fingerprint=request.fingerprint,
    )
    kwargs.update(overrides)
    return MaiImageTrigger(**kwargs)


def _first_event(trigger):
    async def first():
        return await anext(trigger.run())

    return asyncio.run(first()).payload


@pytest.fixture(autouse=True)
def _conn(connect):
    connect()


def test_serialize_round_trips_and_holds_no_secret_or_bytes(tmp_path):
    trigger = _trigger(tmp_path)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_mai.triggers.mai.MaiImageTrigger"
    again = MaiImageTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    text = json.dumps(kwargs)
    assert API_KEY not in text and len(text) < 2000


def test_run_writes_the_png_and_sidecar_and_sends_a_small_record(tmp_path, emulator):
    writer = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": 2}
    payload = _first_event(_trigger(tmp_path, writer=writer))
    assert payload["status"] == "success", payload
    record = payload["record"]
    assert record["uri"].endswith("out.png") and record["b64_json"] is None
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["sha256"] == record["sha256"]
    assert sidecar["uri"] == record["uri"] and {key: sidecar[key] for key in writer} == writer
    assert len(json.dumps(payload)) < 2048


def test_a_restart_after_the_write_reuses_the_image_and_sends_nothing(tmp_path, emulator):
    first = _first_event(_trigger(tmp_path))["record"]
    sent = len(emulator.requests) if hasattr(emulator, "requests") else None
    again = _first_event(_trigger(tmp_path))
    assert again["status"] == "success"
    assert again["record"]["sha256"] == first["sha256"]
    if sent is not None:
        assert len(emulator.requests) == sent


def test_a_permanent_error_comes_back_as_an_event_and_rebuilds_the_sync_class(tmp_path):
    payload = _first_event(_trigger(tmp_path, deployment="no-such-deployment"))
    assert payload["status"] == "error"
    error = error_from_payload(payload)
    assert type(error).__name__ == payload["error"] and payload["status_code"] == 404
    assert not (tmp_path / "out.png").exists()


def test_error_events_of_unknown_classes_become_mai_errors():
    error = error_from_payload({"status": "error", "error": "SystemExit", "message": "x"})
    assert type(error).__name__ == "MaiError"
    assert isinstance(error_from_payload({"error": "MaiBadRequestError", "message": "m"}), MaiBadRequestError)


def test_deferrable_without_output_path_is_refused_naming_it():
    with pytest.raises(ValueError, match="output_path"):
        MaiGenerateImageOperator(task_id="g", prompt="p", deferrable=True)
