"""A whole Airflow on loopback for the UI tests: api-server, scheduler and DAG processor (plus a
triggerer before Airflow 3.3, where Human-in-the-loop tasks defer), the MAI emulator behind
``mai_default``, and a REST client.

It has its own AIRFLOW_HOME and SQLite database: the in-process tests of the same session run
DAGs with ``dag.test()``, which a live scheduler on their database would try to schedule too.
Its users are those of ``tests/support/ui_auth.py``'s per-DAG auth manager (admin, viewer, outsider).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from airflow_provider_mai.emulator import MaiEmulator
from tests.support.connections import API_KEY, emulator_connection
from tests.support.paths import REPO_ROOT
from tests.support.servers import airflow_api_server, airflow_command, free_port, running
from tests.support.ui_auth import PASSWORDS, api_server_auth_env

#: Seconds one REST call may take. A bound that fails under load is a bound that is too short.
CALL_TIMEOUT = 180.0
ROOT = REPO_ROOT
T = TypeVar("T")


@dataclass
class AirflowClient:
    """A small client of Airflow's REST API (and the plugin's routes), signing in as its users."""

    url: str
    passwords: Mapping[str, str]
    _tokens: dict[str, str] = field(default_factory=dict, init=False)

    def token(self, user: str) -> str:
        """An access token for ``user`` from ``POST /auth/token`` (cached)."""
        if user not in self._tokens:
            status, answer = self.call(
                "POST", "/auth/token", None, {"username": user, "password": self.passwords[user]}
            )
            assert status == 201, answer
            self._tokens[user] = answer["access_token"]
        return self._tokens[user]

    def call(self, method: str, path: str, user: str | None = "admin", body: Any = None) -> tuple[int, Any]:
        """One REST call as ``user`` (None: anonymous); the status and the decoded JSON (or bytes)."""
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            # Generous: on a loaded 2-core laptop the api-server answered a first thumbnail in > 30 s.
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as answer:
                status, raw, kind = answer.status, answer.read(), answer.headers.get("content-type", "")
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in kind and raw else raw

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """Start a run of ``dag_id`` (once the DAG processor has registered it, and unpaused: DAGs
        start paused, so the scheduler runs only what a test asks for); its run id."""
        wait_until(lambda: self.call("GET", f"/api/v2/dags/{dag_id}")[0] == 200, 90, f"DAG {dag_id} parsed")
        status, answer = self.call("PATCH", f"/api/v2/dags/{dag_id}", body={"is_paused": False})
        assert status == 200, answer
        status, run = self.call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", body={"logical_date": None, "conf": conf}
        )
        assert status == 200, run
        return run["dag_run_id"]

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        """``(task_id, map_index) -> state`` of a run's task instances."""
        status, answer = self.call("GET", f"{self.run_path(dag_id, run_id)}/taskInstances?limit=100")
        assert status == 200, answer
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in answer["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, within: float = 600) -> str:
        """Wait (bounded) until the run has finished; its final state."""

        def finished() -> str | None:
            state = self.call("GET", self.run_path(dag_id, run_id))[1]["state"]
            return state if state in ("success", "failed") else None

        return wait_until(finished, within, f"run {run_id} of {dag_id} to finish")

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"
    ) -> Any:
        path = (
            f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}/xcomEntries/{key}?map_index={map_index}"
        )
        status, answer = self.call("GET", path)
        assert status == 200, answer
        value = answer["value"]
        return json.loads(value) if isinstance(value, str) else value


@dataclass
class AirflowStack(AirflowClient):
    """A running Airflow: its client, the runs' output folder, the emulator, the scheduler's log."""

    output_base: Path = field(kw_only=True)
    emulator: MaiEmulator = field(kw_only=True)
    scheduler_log: Path = field(kw_only=True)


def wait_until(check: Callable[[], T], within: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy, at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(0.5)


def _airflow_version() -> tuple[int, int]:
    from airflow import __version__

    major, minor = __version__.split(".")[:2]
    return int(major), int(minor)


@contextlib.contextmanager
def airflow_stack(home: Path, *, hidden_dags: Iterable[str]) -> Iterator[AirflowStack]:
    """Start Airflow in ``home`` (a fresh folder) with the emulator; stop every process after.

    Users: see ``tests/support/ui_auth.py`` (``outsider`` may not read ``hidden_dags``)."""
    output_base = home / "out"
    port = free_port()
    with MaiEmulator(api_key=API_KEY) as emulator:
        env = {
            **os.environ,
            **api_server_auth_env(home, hidden_dags=hidden_dags),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__PARALLELISM": "3",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW_CONN_MAI_DEFAULT": emulator_connection(emulator),
            "MAI_OUTPUT_BASE": str(output_base),
            # The api-server imports the test auth manager from this checkout's tests package.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        subprocess.run(
            airflow_command("db", "migrate"), env=env, check=True, capture_output=True, timeout=300
        )
        # Write-ahead logging (a property of the database file): readers stop blocking the one
        # writer, so four Airflow processes share SQLite without "database is locked" errors.
        with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
            db.execute("PRAGMA journal_mode=WAL")
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(airflow_api_server(env, port=port))
            stack.enter_context(running(airflow_command("dag-processor"), None, "dag-processor", env=env))
            scheduler = airflow_command("scheduler", "--skip-serve-logs")
            stack.enter_context(running(scheduler, None, "scheduler", env=env, log=home / "scheduler.log"))
            if _airflow_version() < (3, 3):  # Human-in-the-loop tasks defer to the triggerer there
                command = airflow_command("triggerer", "--skip-serve-logs")
                stack.enter_context(running(command, None, "triggerer", env=env))
            yield AirflowStack(
                url=url,
                passwords=PASSWORDS,
                output_base=output_base,
                emulator=emulator,
                scheduler_log=home / "scheduler.log",
            )
