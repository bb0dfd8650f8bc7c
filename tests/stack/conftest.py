"""The stack tests: the provider on a production-shaped Airflow (``scripts/stack.sh up``).

They drive the running stack through its REST API and files, as a user would; each carries the
marker ``stack`` and is deselected by default. Run them with the stack up:

    bash scripts/stack.sh up && bash scripts/test.sh -m stack; bash scripts/stack.sh down

Without a stack they skip (and fail under CI, which brings it up first). Where a test needs to read
what the MAI service received, it runs an emulator in this process (the workers reach it on
loopback) and points a connection at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from tests.support.servers import unavailable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from stack import airflow as stack_airflow  # noqa: E402  (scripts/stack/)
from stack import config, processes, rest, state  # noqa: E402


def stack_command(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run a stack command as ``scripts/stack.sh`` does (``python -m stack``), without its install
    step, from a user's shell: none of the test suite's own ``AIRFLOW_*`` settings."""
    python_path = os.pathsep.join(p for p in (str(ROOT / "scripts"), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return subprocess.run(
        [sys.executable, "-m", "stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**env, "PYTHONPATH": python_path},
    )


#: The stack tests' own connection and pool (used by tests/stack/dags/mai_stack_generate.py).
TEST_CONN = "mai_stack"
TEST_POOL = "mai_stack"


#: One-line measurements the tests report, printed at the end of the run (CI's log keeps them).
MEASUREMENTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.section("stack measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def stack_is_up() -> None:
    """Skip (fail under CI) unless every component of the stack runs."""
    stack = state.Stack()
    down = [n for n in (*stack.COMPONENTS, *config.WORKERS) if stack.running(n) is None]
    if not stack.state.get("processes") or down:
        unavailable(f"the stack is not up ({', '.join(down)} not running): bash scripts/stack.sh up")


@pytest.fixture
def stack(stack_is_up: None) -> state.Stack:
    """The running stack, its state read afresh (a test may restart a component)."""
    return state.Stack()


@pytest.fixture(scope="session")
def api(stack_is_up: None) -> rest.AirflowApi:
    """The stack's REST API, logged in as its admin."""
    stack = state.Stack()
    api = stack.api()
    for dag_id in ("mai_product_batch", "mai_stack_generate", "mai_daily_campaign"):
        assert processes.wait_until(lambda d=dag_id: None if api.dag_exists(d) else "not parsed", 120) is None
    return api


@pytest.fixture
def output(stack: state.Stack, request: pytest.FixtureRequest) -> Path:
    """A fresh output folder for this test, under the stack's images folder."""
    folder = stack.output / "tests" / f"{request.node.name[:60]}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


EmulatorFactory = Callable[..., MaiEmulator]


@pytest.fixture
def stack_emulator(stack: state.Stack, api: rest.AirflowApi) -> Iterator[EmulatorFactory]:
    """Start an emulator in this process and point a connection at it (default ``mai_stack``).

    ``mai_default`` is restored to the stack's own emulator afterwards.
    """
    started: list[MaiEmulator] = []
    repointed: list[str] = []

    def start(conn_id: str = TEST_CONN, connection_extra: dict[str, Any] | None = None, **kwargs: Any):
        emulator = MaiEmulator(api_key=stack.secrets["api_key"], **kwargs).start()
        started.append(emulator)
        api.put_connection(
            stack_airflow.mai_connection(stack, conn_id, emulator.url, **(connection_extra or {}))
        )
        repointed.append(conn_id)
        return emulator

    try:
        yield start
    finally:
        if "mai_default" in repointed:
            api.put_connection(stack_airflow.default_connection(stack))
        for emulator in started:
            emulator.stop()


def run_dag(api: rest.AirflowApi, dag_id: str, conf: dict[str, Any], within: float = 600) -> dict:
    """Trigger ``dag_id`` through the REST API and wait for the run to end; the run."""
    run = api.trigger(dag_id, conf)
    return api.wait_for_run(dag_id, run["dag_run_id"], within)


def verified_images(results: list[dict[str, Any]]) -> list[Path]:
    """Check each result's PNG and sidecar: present, and the PNG's sha256 is the recorded one."""
    paths = []
    for result in results:
        png = Path(result["uri"].removeprefix("file://"))
        sidecar = json.loads(png.with_suffix(".json").read_text())
        digest = hashlib.sha256(png.read_bytes()).hexdigest()
        assert digest == sidecar["sha256"] == result["sha256"], png
        assert sidecar["ai_generated"] is True
        paths.append(png)
    return paths


def stray_files(folder: Path) -> list[Path]:
    """Temporary or half-written files: anything but finished PNGs and their sidecars."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.name.startswith(".") or p.suffix not in (".png", ".json"))
    ]


def kill_process_tree(process: processes.Process) -> list[processes.Process]:
    """Freeze a component's whole process tree (so nothing forks meanwhile), then SIGKILL all of it,
    as when its host or pod dies; the processes killed."""
    frozen: dict[int, processes.Process] = {}
    for _ in range(20):  # bounded: look again for children forked before their parent froze
        new = [p for p in processes.process_tree(process.pid) if p.pid not in frozen]
        if not new:
            break
        for p in new:
            p.signal(signal.SIGSTOP)
            frozen[p.pid] = p
    for p in frozen.values():
        p.signal(signal.SIGKILL)
    assert processes.all_ended(list(frozen.values()), 10)
    return list(frozen.values())


def metadata_rows(stack: state.Stack, query: str, *params: Any) -> list[tuple]:
    """Rows of a query on the stack's metadata database (PostgreSQL)."""
    import psycopg2

    connection = psycopg2.connect(
        host=config.LOOPBACK,
        port=stack.ports["postgres"],
        user="airflow",
        dbname="airflow",
        password=stack.secrets["postgres_password"],
        connect_timeout=3,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def task_log(
    api: rest.AirflowApi, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> str:
    """A try's log as the UI shows it (REST API): the worker's part and the triggerer's."""
    run = urllib.parse.quote(run_id)
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/{try_number}"
    return json.dumps(api.get(path, map_index=map_index)["content"])


def instant(text: str) -> datetime:
    """A timestamp of the REST API."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def max_overlap(intervals: list[tuple[str, str]]) -> int:
    """The most intervals (ISO start, ISO end) open at one instant."""
    starts = [(instant(start), 1) for start, _ in intervals]
    events = sorted(starts + [(instant(end), -1) for _, end in intervals])
    open_now = peak = 0
    for _, step in events:  # at equal instants -1 sorts first: an end frees its slot for a start
        open_now += step
        peak = max(peak, open_now)
    return peak
