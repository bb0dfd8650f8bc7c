"""A Celery worker killed mid-batch: detected, retried on the other worker, nothing lost or half-written.

The whole worker is killed at once (its main process, pool processes and the task processes below
them: frozen with SIGSTOP, then SIGKILL), as when a host or pod dies. The stack's detection settings
(scripts/stack/airflow.py FAILURE_DETECTION) make that cost seconds: heartbeat timeout 30 s, checked every
5 s, retry after 5 s. The timeline and the re-billed requests are written to
``.stack/reports/worker-loss.json`` (and printed).
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timezone

import pytest

from tests.stack.conftest import (
    MEASUREMENTS,
    instant,
    kill_process_tree,
    processes,
    stack_airflow,
    stack_command,
    stray_files,
    verified_images,
)

pytestmark = pytest.mark.stack

PRODUCTS = [f"Product shot {i}: a linen tote bag printed with pattern {i}" for i in range(12)]
VICTIM = "worker1"
MAI_TASKS = ("generate", "edit")


@pytest.mark.timeout(900)
def test_a_worker_killed_mid_batch_loses_nothing(stack, api, output, stack_emulator):
    emulator = stack_emulator("mai_default", latency=(4.0, 8.0))  # the example DAG's connection
    run_id = api.trigger("mai_product_batch", {"products": PRODUCTS, "output_base": str(output)})[
        "dag_run_id"
    ]
    victim_host = f"stack-{VICTIM}"
    busy: list[dict] = []  # the victim's running MAI tries
    sending: list[str] = []  # prompts of the victim's generation requests awaiting their answer

    def victim_is_busy() -> str | None:
        tis = api.task_instances("mai_product_batch", run_id)
        busy[:] = [
            ti
            for ti in tis
            if ti["state"] == "running" and ti["hostname"] == victim_host and ti["task_id"] in MAI_TASKS
        ]
        victims = {PRODUCTS[ti["map_index"]] for ti in busy if ti["task_id"] == "generate"}
        sending[:] = [
            r.fields["prompt"]
            for r in list(emulator.requests)
            if r.status is None and r.fields.get("prompt") in victims
        ]
        return None if len(sending) >= 2 else "waiting for the victim's requests in flight"

    try:
        assert processes.wait_until(victim_is_busy, 240, 0.3) is None
        killed_at = datetime.now(timezone.utc)
        killed = kill_process_tree(stack.running(VICTIM))
        run = api.wait_for_run("mai_product_batch", run_id, 600)
    finally:
        stack_command("up", check=True)
    assert run["state"] == "success"

    # Every try that was running on the lost worker failed by heartbeat timeout and succeeded on
    # the other worker in its next try.
    timeline = []
    detections = api.get(
        "/api/v2/eventLogs", dag_id="mai_product_batch", run_id=run_id, event="heartbeat timeout", limit=100
    )["event_logs"]
    for ti in busy:
        tries = api.get(
            f"/api/v2/dags/mai_product_batch/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
            f"{ti['task_id']}/{ti['map_index']}/tries"
        )["task_instances"]
        lost = next(t for t in tries if t["try_number"] == ti["try_number"])
        retry = next(t for t in tries if t["try_number"] == ti["try_number"] + 1)
        detected = next(
            instant(e["when"])
            for e in detections
            if (e["task_id"], e["map_index"], e["try_number"])
            == (ti["task_id"], ti["map_index"], ti["try_number"])
        )
        assert lost["state"] in ("up_for_retry", "failed")
        assert (retry["state"], retry["hostname"]) == ("success", "stack-worker2")
        timeline.append(
            {
                "task": f"{ti['task_id']}[{ti['map_index']}]",
                "detected_s": (detected - killed_at).total_seconds(),
                "marked_for_retry_s": (instant(lost["end_date"]) - killed_at).total_seconds(),
                "retry_started_s": (instant(retry["start_date"]) - killed_at).total_seconds(),
                "retry_done_s": (instant(retry["end_date"]) - killed_at).total_seconds(),
            }
        )

    # 0 lost, 0 half-written: every image and sidecar, verified; no temp files.
    tis = api.task_instances("mai_product_batch", run_id)
    mai = [ti for ti in tis if ti["task_id"] in MAI_TASKS]
    assert len(mai) == 2 * len(PRODUCTS) and {ti["state"] for ti in mai} == {"success"}
    results = [api.result("mai_product_batch", run_id, ti["task_id"], ti["map_index"]) for ti in mai]
    assert sorted(output.rglob("*.png")) == sorted(verified_images(results))
    assert stray_files(output) == []

    # Re-billed: requests the service answered (and would bill) beyond the images kept. Only tries
    # killed mid-request can cost one; a try killed after writing its image is reused, not re-sent.
    answered = [r for r in emulator.requests if r.status == 200]
    rebilled = len(answered) - len(mai)
    assert len(sending) <= rebilled <= len(busy)
    for prompt in sending:  # the request cut off by the kill, and its retry's
        assert [r.fields.get("prompt") for r in answered].count(prompt) == 2
    assert {r.status for r in emulator.requests} == {200}

    run_end = (instant(run["end_date"]) - killed_at).total_seconds()
    report = {
        "killed_processes": len(killed),
        "tries_lost": len(busy),
        "requests_cut_off": len(sending),
        "requests": len(emulator.requests),
        "images": len(mai),
        "rebilled_requests": rebilled,
        "run_done_s": run_end,
        "timeline": timeline,
        "settings": stack_airflow.FAILURE_DETECTION,
    }
    reports = stack.folder / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "worker-loss.json").write_text(json.dumps(report, indent=2))

    def span(key: str) -> str:
        return f"{min(e[key] for e in timeline):.1f}-{max(e[key] for e in timeline):.1f} s"

    MEASUREMENTS.append(
        f"worker loss: {len(busy)} tries lost with {len(killed)} processes; after the kill: detected "
        f"{span('detected_s')}, marked for retry {span('marked_for_retry_s')}, retried "
        f"{span('retry_started_s')}, retry done {span('retry_done_s')}, run done {run_end:.1f} s; "
        f"{len(emulator.requests)} requests for {len(mai)} images ({rebilled} re-billed, "
        f"{len(sending)} cut off by the kill)"
    )
