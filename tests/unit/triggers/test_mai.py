"""MaiImageTrigger run with asyncio against the emulator, on a real local filesystem."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai import storage
from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import MaiBadRequestError, MaiTransientError
from airflow_provider_mai.models import GenerateRequest
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from airflow_provider_mai.triggers.mai import MaiImageTrigger, error_from_payload
from tests.conftest import API_KEY
from tests.support.helpers import files_in
from tests.support.helpers import task_context as context


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


# -- restarts: the in-flight marker -----------------------------------------------------------------
def _marker_of(tmp_path):
    return storage.read_inflight(storage.open_location(str(tmp_path / "out.png")))


def _keys(moto_s3, bucket):
    from tests.support.storage_servers import s3_client

    listed = s3_client(moto_s3).list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def _killed_mid_request_then_rerun(tmp_path, emulator, **kwargs):
    """Run a trigger until the emulator holds its request, cancel its task (what a killed triggerer
    looks like to the next one), then run a fresh trigger with the same kwargs: the marker left
    (output in ``tmp_path``), the second run's first event, and how many requests were sent."""
    emulator.inject(Fault(status=None, delay=120))  # the first request hangs: the "killed" one

    async def scenario():
        first = asyncio.ensure_future(anext(_trigger(tmp_path, **kwargs).run()))
        for _ in range(3000):  # bounded: until the request is at the emulator (or the run ended)
            if emulator.requests or first.done():
                break
            await asyncio.sleep(0.01)
        assert emulator.requests and not first.done(), "the first run should be mid-request"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        left = await asyncio.to_thread(
            storage.read_inflight,
            storage.open_location(kwargs.get("output_uri") or str(tmp_path / "out.png")),
        )
        try:
            again = await anext(_trigger(tmp_path, **kwargs).run())
        finally:
            sent = len(emulator.requests)
            # The cancelled run's thread still waits on its answer (the sync stand-in client): end it.
            await asyncio.to_thread(emulator.stop)
        return left, again.payload, sent

    return asyncio.run(scenario())


def _logs(caplog, capfd):
    return caplog.text + "".join(capfd.readouterr())  # Airflow's structlog writes to stdout


def test_a_rerun_after_a_kill_mid_request_resends_once_warns_and_counts_both(
    tmp_path, emulator, caplog, capfd
):
    caplog.set_level(logging.INFO)
    left, payload, sent = _killed_mid_request_then_rerun(tmp_path, emulator)
    assert left is not None and left["attempts"] == 1 and API_KEY not in json.dumps(left)
    assert payload["status"] == "success", payload
    assert sent == 2 and payload["record"]["attempts"] == 2
    assert json.loads((tmp_path / "out.json").read_text())["attempts"] == 2
    assert files_in(tmp_path) == ["out.json", "out.png"]  # one image; no marker, no temporary file
    logs = _logs(caplog, capfd)
    assert "possibly billed" in logs and "did not finish" in logs


def test_without_retry_sent_requests_a_rerun_fails_at_once_and_the_task_raises_it(
    tmp_path, emulator, connect
):
    connect(extra={"retry_sent_requests": False})
    _, payload, sent = _killed_mid_request_then_rerun(tmp_path, emulator)
    assert sent == 1  # nothing sent again
    assert payload["status"] == "error" and payload["possibly_billed"] and payload["attempts"] == 1
    assert "retry_sent_requests=false" in payload["message"]
    assert files_in(tmp_path) == []  # no image, and the marker is gone: clearing the task resends
    op = MaiGenerateImageOperator(task_id="g", prompt="a red kite", output_path=str(tmp_path / "out.png"))
    with pytest.raises(MaiTransientError, match="did not finish") as raised:
        op.execute_complete(context(), event=payload)
    # The synchronous mode's class for a sent, unanswered request - and no task retry resends it.
    assert isinstance(raised.value, AirflowFailException) and raised.value.possibly_billed


def test_a_marker_of_another_request_is_replaced_and_nothing_is_resent(tmp_path, emulator, caplog, capfd):
    location = storage.open_location(str(tmp_path / "out.png"))
    storage.write_inflight(location, {"fingerprint": "0" * 64, "attempts": 7})
    payload = _first_event(_trigger(tmp_path))
    assert payload["status"] == "success" and payload["record"]["attempts"] == 1
    assert len(emulator.requests) == 1 and files_in(tmp_path) == ["out.json", "out.png"]
    assert "possibly billed" not in _logs(caplog, capfd)


@pytest.mark.parametrize("junk", [b"not json", b"[1, 2]", b"{" + b" " * (70 * 1024) + b"}"])
def test_an_unreadable_marker_counts_as_none(tmp_path, emulator, junk):
    (tmp_path / ".out.png.inflight").write_bytes(junk)
    payload = _first_event(_trigger(tmp_path))
    assert payload["status"] == "success" and payload["record"]["attempts"] == 1
    assert files_in(tmp_path) == ["out.json", "out.png"]


def test_the_marker_is_there_while_sending_and_names_no_secret(tmp_path, emulator):
    emulator.inject(Fault(status=None, delay=120))

    async def scenario():
        run = asyncio.ensure_future(anext(_trigger(tmp_path).run()))
        for _ in range(3000):
            if emulator.requests or run.done():
                break
            await asyncio.sleep(0.01)
        marker = _marker_of(tmp_path)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await asyncio.to_thread(emulator.stop)
        return marker

    marker = asyncio.run(scenario())
    assert marker is not None and set(marker) == {"fingerprint", "attempts", "since", "host", "pid"}
    assert marker["fingerprint"] == _trigger(tmp_path).fingerprint
    assert API_KEY not in json.dumps(marker)
    # Hidden and neither .png nor .json: no image or sidecar listing takes it for one.
    assert files_in(tmp_path) == [".out.png.inflight"]
    assert list(tmp_path.glob("*.png")) == list(tmp_path.glob("*.json")) == []


def test_no_marker_is_left_after_a_permanent_error(tmp_path):
    payload = _first_event(_trigger(tmp_path, deployment="no-such-deployment"))
    assert payload["status"] == "error" and payload["status_code"] == 404
    assert files_in(tmp_path) == []


def test_a_transient_error_counts_the_earlier_attempts_and_leaves_no_marker(tmp_path, emulator, connect):
    connect(extra={"max_retries": 0})
    location = storage.open_location(str(tmp_path / "out.png"))
    storage.write_inflight(location, {"fingerprint": _trigger(tmp_path).fingerprint, "attempts": 2})
    emulator.inject(Fault(status=503))
    payload = _first_event(_trigger(tmp_path))
    assert payload["status"] == "error" and payload["error"] == "MaiTransientError"
    assert payload["attempts"] == 3 and files_in(tmp_path) == []


# -- if_exists="overwrite": the image asked to be replaced is never the result ----------------------
def test_the_image_the_task_was_asked_to_overwrite_is_not_reused_but_a_later_one_is(tmp_path, emulator):
    first = _first_event(_trigger(tmp_path))["record"]
    again = _first_event(_trigger(tmp_path, existing_sha256=first["sha256"]))
    assert again["status"] == "success" and not again["record"]["reused"]
    assert len(emulator.requests) == 2  # sent, although a matching image was there
    # A restart after that write: the image there is not the one deferral found (another sha256).
    later = _first_event(_trigger(tmp_path, existing_sha256="0" * 64))
    assert later["record"]["reused"] and later["record"]["sha256"] == first["sha256"]
    assert len(emulator.requests) == 2


def test_on_s3_the_marker_is_one_object_beside_the_output_and_a_rerun_reads_it(
    tmp_path, emulator, s3_bucket, moto_s3
):
    out = f"{s3_bucket}/shots/out.png"
    left, payload, sent = _killed_mid_request_then_rerun(tmp_path, emulator, output_uri=out)
    assert left is not None and left["attempts"] == 1
    assert payload["status"] == "success" and payload["record"]["attempts"] == 2 and sent == 2
    # The marker was one put and is one delete: only the PNG and its sidecar are left.
    assert _keys(moto_s3, s3_bucket.rsplit("@", 1)[1]) == ["shots/out.json", "shots/out.png"]


def test_one_triggerer_holds_more_requests_in_flight_than_asyncio_default_threads(tmp_path, emulator):
    # asyncio's default executor has min(32, cores + 4) threads: 6 on 2 cores capped a triggerer
    # that sent from threads at 6 requests in flight. Requests wait on the event loop, not a thread.
    from tests.support.emulator_requests import most_in_progress

    count = 36
    emulator.inject(Fault(status=None, delay=2.0), times=count)  # every answer after 2 s
    triggers = [_trigger(tmp_path, output_uri=str(tmp_path / f"out-{i}.png")) for i in range(count)]

    async def together():
        return await asyncio.gather(*(anext(t.run()) for t in triggers))

    events = asyncio.run(together())
    assert [e.payload["status"] for e in events] == ["success"] * count
    assert most_in_progress(emulator) == count
