"""Health is the process we started being alive *and* reporting, not a recent heartbeat of anyone's.

The api-server's health page reports the newest heartbeat of any triggerer job: for up to 30 s
after a SIGKILL the dead triggerer still looks healthy there, and so does a replacement that has
not started yet. ``status`` and ``up`` look at the PID they started (same start time, not a
zombie) and at a job that process began.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime, timezone

import pytest

from tests.stack.conftest import instant, processes, stack_command, state

pytestmark = pytest.mark.stack

VICTIM = "triggerer"


@pytest.mark.timeout(300)
def test_a_killed_triggerer_is_unhealthy_at_once_and_up_waits_for_its_replacement(stack, api):
    killed = stack.running(VICTIM)
    tree = list(
        {p.pid: p for p in [*processes.process_tree(killed.pid), *processes.session_members(killed)]}.values()
    )
    assert len(tree) >= 2  # the triggerer and its trigger runner
    try:
        for process in tree:
            process.signal(signal.SIGKILL)
        assert processes.all_ended(tree, 10)
        # Its last heartbeat is still recent (the api-server's health page calls it healthy), but
        # status, asked at once, knows the process is gone.
        result = stack_command("status", "--json", timeout=60)
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report[VICTIM]["health"] == "not running"
        assert {name for name, row in report.items() if row["health"] != "healthy"} == {VICTIM}
    finally:
        restarted = stack_command("up", check=True)

    # `up` started a new triggerer and returned only once that very process heartbeated.
    replacement = state.Stack().running(VICTIM)
    assert replacement is not None and replacement.pid != killed.pid
    assert "Stack up in" in restarted.stdout
    started_at = datetime.fromtimestamp(replacement.started_at(), timezone.utc)
    jobs = api.get("/api/v2/jobs", job_type="TriggererJob", job_state="running", is_alive="true")["jobs"]
    assert any(instant(job["start_date"]) >= started_at for job in jobs)
    status = json.loads(stack_command("status", "--json", timeout=60).stdout)
    assert status[VICTIM] | {"pid": replacement.pid, "health": "healthy"} == status[VICTIM]
