"""Airflow on the stack: the environment every component runs with, their command lines, the
database migration, health, and what ``up`` sets up through the REST API (connections, pool)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterable
from typing import Any

from .config import (
    ADMIN_USER,
    LOOPBACK,
    PACING_REDIS_CONN,
    POOL,
    ROOT,
    WORKERS,
    StackError,
    python_path,
    setting,
)
from .processes import run_logged, wait_until
from .services import check_http, check_postgres, check_redis
from .state import Stack

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


def airflow_env(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process: configuration by variables only."""
    s = stack.secrets
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in (("examples", ROOT / "dags"), ("stack-tests", ROOT / "tests/stack/dags"))
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
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
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
    run_logged(command, "airflow db migrate", stack.log_file("migrate"), airflow_env(stack))
    stack.state["migrated"] = version
    stack.save()


def api_health(stack: Stack, component: str) -> str | None:
    """The api-server's view of a component (``metadatabase``, ``scheduler``, ``triggerer``,
    ``dag_processor``), from its public health endpoint."""
    try:
        with urllib.request.urlopen(f"{stack.api_url}/api/v2/monitor/health", timeout=3) as answer:
            health = json.load(answer)
    except (OSError, ValueError) as exc:
        return f"the api-server does not answer ({type(exc).__name__})"
    status = (health.get(component) or {}).get("status")
    return None if status == "healthy" else f"the api-server reports {component} as {status}"


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
    """None when ``name`` is healthy, else why not."""
    if name == "postgres":
        return check_postgres(stack)
    if name == "redis":
        return check_redis(stack)
    if name == "emulator":
        return check_http(f"{stack.emulator_url}/healthz")
    if name == "api-server":
        return check_http(f"{stack.api_url}/api/v2/version")
    if name in ("scheduler", "triggerer", "dag-processor"):
        return api_health(stack, name.replace("-", "_"))
    if name in WORKERS:
        return None if celery_ping(stack, [name])[name] else "no answer to a Celery ping"
    raise ValueError(name)


def start_airflow(stack: Stack, within: float) -> None:
    """Migrate, start the components that are not running, and wait until each is healthy."""
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


def mai_connection(stack: Stack, connection_id: str, emulator_url: str, **extra: Any) -> dict[str, Any]:
    """A ``mai`` connection (REST API form) to an emulator taking the stack's API key."""
    return {
        "connection_id": connection_id,
        "conn_type": "mai",
        "host": emulator_url,
        "password": stack.secrets["api_key"],
        "extra": json.dumps({"deployment": "mai-image-2-5", **extra}),
    }


def configure(stack: Stack, within: float) -> None:
    """The ``mai_default`` connection (to the emulator), the pacing Redis connection, the pool;
    then wait until the example DAGs are parsed."""
    api = stack.api()
    api.put_connection(mai_connection(stack, "mai_default", stack.emulator_url))
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
    slots = int(setting("POOL_SLOTS", "6"))
    api.put_pool(POOL, slots, "MAI image deployment quota (stack: scaled latency)")

    def parsed() -> str | None:
        missing = [d for d in ("mai_product_batch", "mai_daily_campaign") if not api.dag_exists(d)]
        return f"DAGs not parsed yet: {', '.join(missing)}" if missing else None

    reason = wait_until(parsed, within, interval=1.0)
    if reason:
        raise StackError(f"{reason}. Read {stack.log_file('dag-processor')} and {stack.home / 'logs'}")
