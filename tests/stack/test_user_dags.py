"""Your own DAGs on the stack: ``up --dags DIR`` with connections given at ``up``.

The user's folder becomes a third DAG bundle (``user-dags``) beside the examples; ``up`` with a new
folder restarts the Airflow components (the services stay), waits until the folder's DAG files are
parsed and names its DAGs and import errors. A file added later is parsed within seconds (the
stack lists bundles every 5 s instead of Airflow's 300 s). Connections come from
``--connection ID=URI`` and ``--connections-file``; no password is ever printed.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest

from tests.stack.conftest import MEASUREMENTS, processes, run_dag, stack_airflow, stack_command, state

pytestmark = pytest.mark.stack

DAG = """
from datetime import datetime

from airflow.sdk import DAG, BaseHook, task

from helpers.hosts import joined

with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def hosts() -> str:
        return joined(BaseHook.get_connection(name).host for name in ("user_api", "user_db"))

    hosts()
"""


@pytest.mark.timeout(600)
def test_up_runs_your_dag_folder_and_connections(stack, api, tmp_path):
    folder = stack.folder / f"user-dags-{uuid.uuid4().hex[:8]}"  # lives as long as the stack uses it
    (folder / "helpers").mkdir(parents=True)
    (folder / "helpers" / "__init__.py").write_text("")
    (folder / "helpers" / "hosts.py").write_text("def joined(hosts):\n    return '|'.join(hosts)\n")
    (folder / "user_hosts.py").write_text(DAG.format(dag_id="user_hosts"))
    (folder / "user_broken.py").write_text(
        "from airflow.sdk import DAG\nraise RuntimeError('broken on purpose')\n"
    )
    api_password, db_password = f"api-{uuid.uuid4().hex}", f"db-{uuid.uuid4().hex}"
    connections = tmp_path / "connections.json"
    connections.write_text(
        json.dumps({"user_api": {"conn_type": "http", "host": "api.example.test", "password": api_password}})
    )
    connections.chmod(0o600)
    before = state.Stack().processes
    try:
        result = stack_command(
            "up",
            *("--dags", str(folder)),
            *("--connections-file", str(connections)),
            *("--connection", f"user_db=postgres://shop:{db_password}@db.example.test:5432/shop"),
            timeout=400,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout + result.stderr
        assert api_password not in out and db_password not in out
        assert f"Restarting Airflow for the DAG folder {folder}" in out
        assert f"your DAGs ({folder}, bundle user-dags): user_hosts" in out
        assert "import error in user_broken.py: RuntimeError: broken on purpose" in out
        assert "your connections: user_api, user_db" in out
        after = state.Stack().processes
        for name in state.Stack.AIRFLOW:  # restarted with the new bundle; the services kept
            assert after[name] != before[name]
        for name in ("postgres", "redis", "emulator"):
            assert after[name] == before[name]

        run = run_dag(api, "user_hosts", {}, within=240)
        assert run["state"] == "success"
        assert api.result("user_hosts", run["dag_run_id"], "hosts") == "api.example.test|db.example.test"

        # A DAG file added to the running stack shows up within seconds (bound: 10x the promise).
        added = time.monotonic()
        (folder / "user_added.py").write_text(DAG.format(dag_id="user_added"))
        assert (
            processes.wait_until(lambda: None if api.dag_exists("user_added") else "not yet", 120, 0.5)
            is None
        )
        delay = time.monotonic() - added
        MEASUREMENTS.append(f"user DAG folder: a new DAG file parsed {delay:.1f} s after it was written")
    finally:
        back = stack_command("up", "--dags", "", timeout=400)  # the examples only again
        shutil.rmtree(folder, ignore_errors=True)
    assert back.returncode == 0, back.stdout + back.stderr
    assert state.Stack().dags_folder is None
    bundles = json.loads(
        stack_airflow.airflow_env(state.Stack())["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"]
    )
    assert [b["name"] for b in bundles] == ["examples", "stack-tests"]
