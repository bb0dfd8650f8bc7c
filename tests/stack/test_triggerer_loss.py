"""The triggerer killed mid-batch: its triggers run again in the new one, nothing lost or half-written,
and every request re-sent is counted.

A deferrable batch (``mai_stack_chain_deferred``, generations only) waits in the triggerer with all
its requests in flight at a slow emulator; the triggerer's whole process tree is killed at once
(SIGSTOP, then SIGKILL: a host or pod dying) and started again as the stack does
(``scripts/stack.sh restart triggerer``). Trigger rows outlive their triggerer: the new one claims
them once the dead one's heartbeat is 30 s old and runs each again from its stored kwargs. A request
the kill cut off may have been made (and billed) by the service: the trigger finds its in-flight
marker, sends again, logs "possibly billed" and counts the earlier attempt in the record's
``attempts``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.stack.conftest import (
    MEASUREMENTS,
    TEST_POOL,
    kill_process_tree,
    processes,
    stack_command,
    state,
    stray_files,
    task_log,
    verified_images,
)

pytestmark = pytest.mark.stack

DAG_ID = "mai_stack_chain_deferred"
BATCH = 8


@pytest.mark.timeout(900)
def test_a_triggerer_killed_mid_batch_loses_nothing_and_counts_resent_requests(
    stack, api, output, stack_emulator
):
    # Slow answers (the service's p95 is 80 s): the 8 tasks start and defer over up to ~30 s on
    # 2 cores, and every request must be in flight, none answered, at the kill.
    emulator = stack_emulator(latency=(50.0, 60.0))
    tag = uuid.uuid4().hex[:8]  # this run's requests, apart from any other run's at the emulator
    prompts = [f"Triggerer loss {tag} {i}: a glass terrarium with a fern, angle {i}" for i in range(BATCH)]
    api.put_pool(TEST_POOL, 16, "stack tests", include_deferred=True)
    conf = {"prompts": prompts, "output_base": str(output), "edit": False}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]

    def ours() -> list:
        return [r for r in list(emulator.requests) if r.fields.get("prompt") in prompts]

    def all_in_flight() -> str | None:
        seen = ours()
        waiting = [r for r in seen if r.status is None]
        assert len(waiting) == len(seen), "an answer came before the kill: make the latency longer"
        return None if len(waiting) == BATCH else f"{len(waiting)} requests in flight"

    try:
        assert processes.wait_until(all_in_flight, 300, 0.3) is None
        cut_off = sorted(r.fields["prompt"] for r in ours())
        victim = stack.running("triggerer")
        assert victim is not None
        killed_at = time.monotonic()
        killed = kill_process_tree(victim)
        restarted = stack_command("restart", "triggerer", timeout=300)
        restarted_in = time.monotonic() - killed_at
    finally:
        if state.Stack().running("triggerer") is None:  # the restart failed: leave a whole stack
            stack_command("up", check=True)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert state.Stack().running("triggerer").pid != victim.pid
    run = api.wait_for_run(DAG_ID, run_id, 600)
    done_in = time.monotonic() - killed_at
    assert run["state"] == "success"
    assert sorted(cut_off) == sorted(prompts)  # the kill cut off every request of the batch

    # 0 lost, 0 half-written: every image and sidecar, verified; no temp file or marker left.
    tis = [ti for ti in api.task_instances(DAG_ID, run_id) if ti["task_id"] == "generate"]
    assert len(tis) == BATCH and {ti["state"] for ti in tis} == {"success"}
    results = {ti["map_index"]: api.result(DAG_ID, run_id, "generate", ti["map_index"]) for ti in tis}
    assert sorted(output.rglob("*.png")) == sorted(verified_images(list(results.values())))
    assert stray_files(output) == []

    # Each request was sent twice - once by the killed triggerer, once by the new one - and the
    # records and the task logs say so.
    posts = [r.fields["prompt"] for r in ours()]
    assert sorted(posts) == sorted(prompts * 2)
    assert [results[i]["attempts"] for i in sorted(results)] == [2] * BATCH
    for ti in tis:
        log = task_log(api, DAG_ID, run_id, "generate", ti["map_index"], ti["try_number"])
        assert "possibly billed" in log, ti["map_index"]  # the triggerer's part of the try's log
        assert ti["try_number"] == 1  # the trigger ran again; the task was not retried

    MEASUREMENTS.append(
        f"triggerer loss: SIGKILL of {len(killed)} processes with {len(cut_off)} requests in flight; "
        f"restarted and healthy at +{restarted_in:.1f} s, run done at +{done_in:.1f} s; "
        f"{len(posts)} POSTs for {len(results)} images (each cut-off request re-sent once, "
        "counted in attempts, logged as possibly billed)"
    )
