"""Airflow on the stack: the environment every component runs with, their command lines, the
database migration, health, and what ``up`` sets up through the REST API (connections, pool)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from .config import (
    ADMIN_USER,
    LOOPBACK,
    PACING_REDIS_CONN,
    POOL,
    WORKERS,
    StackError,
    python_path,
    setting,
)
from .processes import Process, run_logged, wait_until
from .services import check_http, check_postgres, check_redis
from .state import Stack
from .user import STACK_DAG_FOLDERS, USER_BUNDLE, DagsChoice, dag_files

#: Settings that make a lost worker cost seconds, not the defaults' ten minutes (see README).
FAILURE_DETECTION = {
    # A task's supervisor heartbeats every 5 s ([workers] min_heartbeat_interval): six missed
    # heartbeats and the scheduler fails the try (default 300 s), checked every 5 s (default 10 s).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # The retry of a failed try starts 5 s later (default 300 s), when the DAG sets no retry_delay.
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
    # A task handed to a worker that died before starting it stays "queued": requeued after 120 s
    # (default 600 s), checked every 15 s (default 120 s).
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
}
#: Settings for many task starts at once on a small machine (see README, "A burst of task starts").
BURST_TOLERANCE = {
    # Each call a task's supervisor makes to the execution API (mark the try running, heartbeats,
    # XComs, the end state) gives up after this long (default 5 s), then is retried ([workers]
    # execution_api_retries, 5). A start call that times out after it landed is retried into "already
    # running" and the try fails before it ran. 20 s stays under the 30 s heartbeat timeout above.
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "20",
}
# The triggerer (deferrable tasks) runs with Airflow's defaults, on purpose (README, "Deferrable
# mode on the stack"): [triggerer] capacity 1000 triggers is far above the 60-120 requests a
# 180-RPM quota keeps in flight; triggerer_health_check_threshold 30 s is how long the triggers of
# a killed triggerer wait before a new one claims them - lower would hand triggers over from a
# triggerer merely starved of CPU for a moment on 2 cores; [operators] default_deferrable stays
# false, so the examples are the synchronous baseline and a DAG asks for deferrable=True. Answers
# arriving together resume their tasks on the workers together: a burst of task starts, which
# BURST_TOLERANCE above covers.
#: Settings that make a DAG file you add or change show up in seconds (see README).
DAG_PARSING = {
    # A DAG bundle is listed for new and deleted files every refresh_interval seconds (default
    # 300: a new file waited up to five minutes), checked every bundle_refresh_check_interval (5).
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
}
#: The job that heartbeats for each scheduling component (``GET /api/v2/jobs?job_type=``).
JOB_TYPES = {"scheduler": "SchedulerJob", "triggerer": "TriggererJob", "dag-processor": "DagProcessorJob"}


def airflow_env(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process: configuration by variables only."""
    s = stack.secrets
    folders = dict(STACK_DAG_FOLDERS)
    if stack.dags_folder is not None:
        folders[USER_BUNDLE] = stack.dags_folder
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in folders.items()
    ]
    # Nothing Airflow-related leaks in from the caller's shell (an AIRFLOW_CONN_MAI_DEFAULT
    # exported for the demo would shadow the stack's own connection).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return {
        **inherited,
        "AIRFLOW_HOME": str(stack.home),
        "PYTHONPATH": python_path(),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(STACK_DAG_FOLDERS["examples"]),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack_hostname.hostname",
        "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": stack.database_url,
        "AIRFLOW__CELERY__BROKER_URL": f"{stack.redis_url}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{stack.database_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": setting("WORKER_CONCURRENCY", "4"),
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(stack.ports["api"]),
        "AIRFLOW__API__BASE_URL": stack.api_url,
        "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.api_url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(stack.folder / "passwords.json"),
        **FAILURE_DETECTION,
        **BURST_TOLERANCE,
        **DAG_PARSING,
        "MAI_OUTPUT_BASE": str(stack.output),
        **(extra or {}),
    }


def airflow_commands(stack: Stack) -> dict[str, list[str]]:
    """The command line of each Airflow component. No log servers: they would bind 0.0.0.0."""
    airflow = [sys.executable, "-m", "airflow"]
    concurrency = setting("WORKER_CONCURRENCY", "4")
    commands = {
        "api-server": [*airflow, "api-server"],
        "scheduler": [*airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [*airflow, "dag-processor"],
        "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
    }
    for worker in WORKERS:
        commands[worker] = [
            *airflow,
            *("celery", "worker", "-H", f"{worker}@%h", "-q", "default", "-c", concurrency),
            "--skip-serve-logs",
        ]
    return commands


def worker_env(stack: Stack, worker: str) -> dict[str, str]:
    """A worker's own host name (in task instances) and temp folder (the default pacing folder),
    as if it ran on a host of its own."""
    tmp = stack.folder / "workers" / worker / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return airflow_env(stack, {"MAI_STACK_HOSTNAME": f"stack-{worker}", "TMPDIR": str(tmp)})


def migrate(stack: Stack) -> None:
    """``airflow db migrate`` once per Airflow version (about 10 s on PostgreSQL)."""
    import importlib.metadata

    version = importlib.metadata.version("apache-airflow")
    if stack.state.get("migrated") == version:
        return
    command = [sys.executable, "-m", "airflow", "db", "migrate"]
    # From the state folder, as every component: a process started in the repository would find the
    # editable install's egg-info there too, and load the provider's plugin twice.
    run_logged(command, "airflow db migrate", stack.log_file("migrate"), airflow_env(stack), stack.folder)
    stack.state["migrated"] = version
    stack.save()


def job_health(stack: Stack, name: str, process: Process) -> str | None:
    """Whether the scheduler, triggerer or DAG processor we started reports: a running job of its
    type, begun after this very process started, heartbeating within Airflow's threshold. (The
    api-server's health page reports the newest heartbeat of *any* such job: a process killed a
    moment ago still looks healthy there for up to 30 s, and so would its replacement before it
    had started.)"""
    since = datetime.fromtimestamp(process.started_at() - 1.0, timezone.utc)
    try:
        jobs = stack.api().get(
            "/api/v2/jobs",
            job_type=JOB_TYPES[name],
            job_state="running",
            start_date_gte=since.isoformat(),
            is_alive="true",
            limit=10,
        )["jobs"]
    except (OSError, ValueError, KeyError) as exc:  # HTTPError and URLError are OSErrors
        return f"the api-server does not answer ({type(exc).__name__})"
    return None if jobs else f"no heartbeat from pid {process.pid} (the process we started)"


def celery_ping(stack: Stack, workers: Iterable[str]) -> dict[str, bool]:
    """Which of these Celery workers answer a ping through the broker (1 s)."""
    from celery import Celery

    app = Celery(broker=f"{stack.redis_url}/0")
    try:
        answers = app.control.ping(timeout=1.0)
    except Exception:  # a broker hiccup is "no answer", not a crash of status
        answers = []
    finally:
        app.close()
    nodes = {name.split("@", 1)[0] for answer in answers for name in answer}
    return {worker: worker in nodes for worker in workers}


def component_health(stack: Stack, name: str) -> str | None:
    """None when ``name`` is healthy: the process we started is alive (same PID and start time,
    not a zombie) *and* it does its job (answers, or heartbeats); else why not."""
    process = stack.processes.get(name)
    if process is None:
        return "not started"
    if not process.alive():
        return f"not running (pid {process.pid} ended)"
    if name == "postgres":
        return check_postgres(stack)
    if name == "redis":
        return check_redis(stack)
    if name == "emulator":
        return check_http(f"{stack.emulator_url}/healthz")
    if name == "api-server":
        return check_http(f"{stack.api_url}/api/v2/version")
    if name in JOB_TYPES:
        return job_health(stack, name, process)
    if name in WORKERS:
        return None if celery_ping(stack, [name])[name] else "no answer to a Celery ping"
    raise ValueError(name)


def start_airflow(stack: Stack, within: float, dags: DagsChoice | None = None) -> None:
    """Migrate, start the components that are not running, and wait until each is healthy. A DAG
    folder other than the one the running components have restarts them (services stay up)."""
    wanted = stack.dags_folder if dags is None else dags.folder
    running = [name for name in Stack.AIRFLOW if stack.running(name)]
    if wanted != stack.dags_folder and running:
        print(
            f"Restarting Airflow for the DAG folder {wanted or '(none: the examples only)'} ...", flush=True
        )
        stack.stop(running)
    stack.state["dags_folder"] = str(wanted) if wanted else None
    stack.save()
    migrate(stack)
    started = []
    for name, command in airflow_commands(stack).items():
        if stack.running(name):
            continue
        env = worker_env(stack, name) if name in WORKERS else airflow_env(stack)
        stack.start(name, command, env)
        started.append(name)
    for name in started:
        stack.wait_healthy(name, within, lambda name=name: component_health(stack, name))


#: The description of the connections the stack writes: a ``mai_default`` without it is the user's.
STACK_CONNECTION = "The stack's MAI emulator (scripts/stack.sh up)"


def mai_connection(stack: Stack, connection_id: str, emulator_url: str, **extra: Any) -> dict[str, Any]:
    """A ``mai`` connection (REST API form) to an emulator taking the stack's API key."""
    return {
        "connection_id": connection_id,
        "conn_type": "mai",
        "description": STACK_CONNECTION,
        "host": emulator_url,
        "password": stack.secrets["api_key"],
        "extra": json.dumps({"deployment": "mai-image-2-5", **extra}),
    }


def default_connection(stack: Stack) -> dict[str, Any]:
    """``mai_default``: the stack's emulator, paced to its quota across both workers (``rpm`` as the
    emulator enforces it, the schedule in the stack's Redis)."""
    rpm = stack.state.get("emulator_rpm")
    pacing = {"rpm": rpm, "rpm_redis_conn_id": PACING_REDIS_CONN} if rpm else {}
    return mai_connection(stack, "mai_default", stack.emulator_url, **pacing)


def configure(stack: Stack, within: float, connections: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The connections (``mai_default`` to the emulator unless the user has their own, the pacing
    Redis connection, the user's), the pool; then wait until the DAGs are parsed. Lines to print."""
    api = stack.api()
    notes = []
    mine = {c["connection_id"] for c in connections}
    current = api.get_or_none("/api/v2/connections/mai_default")
    if "mai_default" not in mine and current is not None and current.get("description") != STACK_CONNECTION:
        notes.append("mai_default is yours (not the stack's emulator): kept")
    else:
        api.put_connection(default_connection(stack))
    api.put_connection(
        {
            "connection_id": PACING_REDIS_CONN,
            "conn_type": "redis",
            "host": LOOPBACK,
            "port": stack.ports["redis"],
            "password": stack.secrets["redis_password"],
            "extra": json.dumps({"db": 1}),
        }
    )
    for connection in connections:
        api.put_connection(connection)
    if mine:
        notes.append(f"your connections: {', '.join(sorted(mine))}")
    slots = int(setting("POOL_SLOTS", "6"))
    # A quota pool counts deferred tasks too: without include_deferred a deferrable task leaves its
    # slot while its request is in flight, and the pool would no longer bound requests in flight
    # (the connection's rpm pacing, which runs in the trigger as well, still would).
    api.put_pool(POOL, slots, "MAI image deployment quota (stack: scaled latency)", include_deferred=True)

    def parsed() -> str | None:
        missing = [d for d in ("mai_product_batch", "mai_daily_campaign") if not api.dag_exists(d)]
        return f"DAGs not parsed yet: {', '.join(missing)}" if missing else None

    reason = wait_until(parsed, within, interval=1.0)
    if reason:
        raise StackError(f"{reason}. Read {stack.log_file('dag-processor')} and {stack.home / 'logs'}")
    if stack.dags_folder is not None:
        notes += user_dags_parsed(stack, min(within, 90.0))
    return notes


def user_dags_parsed(stack: Stack, within: float) -> list[str]:
    """Wait (bounded) until every file of the user's folder that may hold a DAG has its DAGs or its
    import error on record; what was found, to print."""
    api, folder = stack.api(), stack.dags_folder
    assert folder is not None
    files = dag_files(folder)
    dags: dict[str, list[str]] = {}
    errors: dict[str, str] = {}

    def accounted() -> str | None:
        dags.clear()
        errors.clear()
        for dag in api.pages("/api/v2/dags", "dags", bundle_name=USER_BUNDLE):
            dags.setdefault(dag["relative_fileloc"], []).append(dag["dag_id"])
        for error in api.pages("/api/v2/importErrors", "import_errors", bundle_name=USER_BUNDLE):
            errors[error["filename"]] = error["stack_trace"].strip().splitlines()[-1]
        waiting = [f for f in files if f not in dags and f not in errors]
        return f"not parsed yet: {', '.join(waiting)}" if waiting else None

    reason = wait_until(accounted, within, interval=1.0)
    found = sorted(d for ids in dags.values() for d in ids)
    notes = [f"your DAGs ({folder}, bundle {USER_BUNDLE}): {', '.join(found) or 'none yet'}"]
    notes += [f"  import error in {name}: {last[:200]}" for name, last in sorted(errors.items())]
    if reason:
        notes.append(f"  {reason} (after {within:.0f} s; a file without DAGs stays so)")
    return notes
