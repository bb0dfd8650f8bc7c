"""``scripts/stack.sh trigger`` reports every run it caused, and reused images as reused.

Unpausing a paused ``@daily`` DAG whose day is due makes the scheduler start the day's scheduled run
beside the one ``trigger`` posts: both are reported, each image with the worker that made it - or,
for an image an earlier run of the day had made already, ``reused`` (no request sent).
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone

import pytest

from tests.stack.conftest import TEST_POOL, instant, processes, stack_command

pytestmark = pytest.mark.stack

DAG_ID = "mai_stack_daily"


def fresh_paused_dag(api) -> dict:
    """The DAG as if new: deleted (with its runs), parsed again (paused, its day due)."""
    api.request("DELETE", f"/api/v2/dags/{DAG_ID}")

    def back() -> str | None:
        dag = api.get_or_none(f"/api/v2/dags/{DAG_ID}")
        return None if dag is not None and dag["next_dagrun_run_after"] else "not parsed again yet"

    assert processes.wait_until(back, 180, 1.0) is None
    dag = api.get(f"/api/v2/dags/{DAG_ID}")
    assert dag["is_paused"] and instant(dag["next_dagrun_run_after"]) <= datetime.now(timezone.utc)
    return dag


@pytest.mark.timeout(600)
def test_trigger_reports_the_scheduled_run_the_unpause_started_and_reused_images(stack, api, stack_emulator):
    emulator = stack_emulator(latency=(0.5, 1.0))
    api.put_pool(TEST_POOL, 8, "stack tests")
    shutil.rmtree(stack.output / "daily", ignore_errors=True)  # the days of earlier test runs
    fresh_paused_dag(api)
    try:
        result = stack_command("trigger", DAG_ID, timeout=500)
        runs = {r["dag_run_id"]: r for r in api.pages(f"/api/v2/dags/{DAG_ID}/dagRuns", "dag_runs")}
    finally:
        api.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": True})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    # Two runs: the one posted, and the day's scheduled run the unpause started; both reported.
    assert sorted(r["run_type"] for r in runs.values()) == ["manual", "scheduled"]
    assert {r["state"] for r in runs.values()} == {"success"}
    posted = re.search(r"Triggered mai_stack_daily, run (\S+); waiting", out).group(1)
    (scheduled,) = set(runs) - {posted}
    assert f"The unpause also started run {scheduled}" in out
    assert "was paused: it is unpaused now" in out
    summaries = dict(re.findall(r"^Run (\S+) success in [\d.]+ s: (.*)\.$", out, re.M))
    assert set(summaries) == set(runs)

    # One run made the three images (3 requests in all); the other reused them and says so.
    assert len(emulator.requests) == 3
    made = re.findall(r"^  generate\[\d\] +stack-worker\d +try \d+  (\S+)$", out, re.M)
    reused = re.findall(r"^  generate\[\d\] +reused +0 requests  (\S+)$", out, re.M)
    assert len(made) == len(reused) == 3 and sorted(made) == sorted(reused)
    maker, reuser = sorted(summaries.values(), key=lambda text: "reused" in text)
    assert reuser == "3 reused (no request)"
    assert re.fullmatch(r"(\d by stack-worker\d, )?\d by stack-worker\d", maker)
