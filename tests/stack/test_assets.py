"""The Asset chain on the stack: one event per day's images, and the scheduler starts the publisher."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.stack.conftest import instant, processes, rest

pytestmark = pytest.mark.stack

CAMPAIGN, PUBLISH = "mai_daily_campaign", "mai_campaign_publish"


def run_ids(api: rest.AirflowApi, dag_id: str) -> set[str]:
    runs = api.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100, order_by="-run_after")["dag_runs"]
    return {run["dag_run_id"] for run in runs}


def start_one_campaign_run(api: rest.AirflowApi) -> str:
    """Unpause the campaign and return its one new run: the scheduler's own, when an interval is due
    (unpausing starts it), else one triggered by hand. Never both: two campaign runs finishing
    within a moment of each other meet an Airflow 3.3.2 race in which the second event starts no
    publish run until a later event comes (apache/airflow#54659)."""
    before = run_ids(api, CAMPAIGN)
    due = api.get(f"/api/v2/dags/{CAMPAIGN}")["next_dagrun_run_after"]
    if due is None or instant(due) > datetime.now(timezone.utc):
        return api.trigger(CAMPAIGN)["dag_run_id"]
    api.request("PATCH", f"/api/v2/dags/{CAMPAIGN}", {"is_paused": False})
    new: set[str] = set()

    def started() -> str | None:
        new.update(run_ids(api, CAMPAIGN) - before)
        return None if new else "no run yet"

    assert processes.wait_until(started, 60, 1.0) is None
    (run_id,) = new
    return run_id


@pytest.mark.timeout(400)
def test_a_days_images_make_one_event_and_the_publisher_sees_them_all(stack, api):
    api.request("PATCH", f"/api/v2/dags/{PUBLISH}", {"is_paused": False})
    publishes_before = run_ids(api, PUBLISH)
    try:
        run_id = start_one_campaign_run(api)
        assert api.wait_for_run(CAMPAIGN, run_id, 240)["state"] == "success"
    finally:
        api.request("PATCH", f"/api/v2/dags/{CAMPAIGN}", {"is_paused": True})

    variations = [ti for ti in api.task_instances(CAMPAIGN, run_id) if ti["task_id"] == "variation"]
    assert len(variations) == 3
    uris = sorted(api.result(CAMPAIGN, run_id, "variation", ti["map_index"])["uri"] for ti in variations)
    # One event for the day, not one per variation, emitted once the last variation was written.
    (event,) = api.get("/api/v2/assets/events", source_dag_id=CAMPAIGN, source_run_id=run_id)["asset_events"]
    assert event["name"] == "mai_campaign_images"
    assert event["source_task_id"] == "announce"
    assert event["extra"]["images"] == uris
    assert instant(event["timestamp"]) >= max(instant(ti["end_date"]) for ti in variations)

    # The scheduler starts the publisher on its own, and that run sees every image of the day.
    def published() -> str | None:
        for run in [api.run(PUBLISH, r) for r in run_ids(api, PUBLISH) - publishes_before]:
            consumed = api.get(f"/api/v2/dags/{PUBLISH}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
            if event["id"] in [e["id"] for e in consumed["asset_events"]] and run["state"] == "success":
                found.append(run)
        return None if found else "no successful publish run consumed the event yet"

    found: list[dict] = []
    assert processes.wait_until(published, 120, 1.0) is None
    (publish,) = found
    assert publish["run_type"] == "asset_triggered"
    assert instant(publish["start_date"]) >= instant(event["timestamp"])
    # It lists exactly what its events announced: this day's images (and those of any earlier event
    # the race above left unconsumed - it is consumed by the next run).
    consumed = api.get(f"/api/v2/dags/{PUBLISH}/dagRuns/{publish['dag_run_id']}/upstreamAssetEvents")
    announced = sorted({uri for e in consumed["asset_events"] for uri in e["extra"]["images"]})
    listed = api.result(PUBLISH, publish["dag_run_id"], "list_new_images")
    assert listed == announced
    assert set(uris) <= set(listed)
