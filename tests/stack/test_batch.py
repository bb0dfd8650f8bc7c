"""The product batch on the stack: both Celery workers, every image verified, the pool holding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.stack.conftest import config, max_overlap, stack_command, stray_files, verified_images

pytestmark = pytest.mark.stack

PRODUCTS = [f"Product shot {i}: a ceramic mug glazed in shade {i} on a walnut desk" for i in range(24)]


@pytest.mark.timeout(600)
def test_product_batch_runs_on_both_workers_within_the_pool(stack, api, output):
    conf = {"products": PRODUCTS, "output_base": str(output)}
    # As a user would: the script triggers, waits and reports (the stack's own emulator answers).
    report = stack_command("trigger", "mai_product_batch", json.dumps(conf), timeout=580)
    assert report.returncode == 0, report.stdout + report.stderr
    run_id = re.search(r"run (\S+); waiting", report.stdout).group(1)
    assert re.search(
        rf"Run {re.escape(run_id)} success in [\d.]+ s: \d+ by stack-worker1, \d+ by stack-worker2\.$",
        report.stdout,
        re.M,
    )

    tis = api.task_instances("mai_product_batch", run_id)
    mai = [ti for ti in tis if ti["task_id"] in ("generate", "edit")]
    assert len(mai) == 2 * len(PRODUCTS)
    assert {ti["state"] for ti in mai} == {"success"}
    assert {ti["hostname"] for ti in mai} == {"stack-worker1", "stack-worker2"}

    results = {
        (ti["task_id"], ti["map_index"]): api.result(
            "mai_product_batch", run_id, ti["task_id"], ti["map_index"]
        )
        for ti in mai
    }
    images = verified_images(list(results.values()))
    # mai_default is paced to the quota its emulator enforces (rpm, the schedule in Redis): the
    # pool asks for more than the quota, yet no request was refused and retried.
    assert [r["attempts"] for r in results.values()] == [1] * len(mai)
    assert sorted(output.rglob("*.png")) == sorted(images)  # 48 distinct PNGs, each with its sidecar
    assert stray_files(output) == []
    for ti in mai:  # the report names each image and the worker that made it
        uri = results[(ti["task_id"], ti["map_index"])]["uri"]
        assert re.search(rf"{ti['hostname']} +try \d+ +{re.escape(uri)}$", report.stdout, re.M)
    for index in range(len(PRODUCTS)):  # each edit started from its own generated image
        edited = Path(results[("edit", index)]["sidecar_uri"].removeprefix("file://"))
        assert json.loads(edited.read_text())["source_image"] == results[("generate", index)]["uri"]

    # The pool, not the 2 x 4 worker slots, bounds how many tasks run at once - and is filled.
    slots = api.get(f"/api/v2/pools/{config.POOL}")["slots"]
    assert {ti["pool"] for ti in tis} == {config.POOL}
    assert max_overlap([(ti["start_date"], ti["end_date"]) for ti in tis]) == slots < 8
