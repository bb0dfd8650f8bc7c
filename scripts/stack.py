"""A production-shaped Airflow on this machine: CeleryExecutor workers, PostgreSQL and Redis.

    python scripts/stack.py up | status [--json] | trigger DAG_ID [CONF_JSON] | down [--purge]

(``scripts/stack.sh`` installs what it needs first, then runs this.) ``up`` starts, each bound to
127.0.0.1 on its own port and each stopped by its PID on ``down``:

- PostgreSQL (Debian's, run as the ``postgres`` user when we are root): a private cluster in the
  state folder, the metadata database ``airflow``;
- Redis (Debian's ``redis-server``, password in a 0600 file, nothing persisted): the Celery broker
  (database 0) and the pacing schedule of ``rpm_redis_conn_id`` (database 1);
- the MAI emulator with scaled latency (2-6 s for the service's ~40 s);
- Airflow: ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery
  worker`` processes, each worker with its own host name in task instances and its own temp folder
  (like two hosts); no log server anywhere (the api-server reads task logs from the shared folder).

Everything Airflow needs comes through environment variables (no airflow.cfg edits): one JWT
secret, fernet key and execution API URL for all. The state folder (``.stack/`` in the repository,
git-ignored, or ``$MAI_STACK_DIR``) holds ports, secrets (mode 0600), PIDs, logs, the database and
the images (``out/``). ``up`` on a running stack starts only what is missing.

Settings (environment): ``MAI_STACK_DIR``; ports ``MAI_STACK_API_PORT``, ``MAI_STACK_POSTGRES_PORT``,
``MAI_STACK_REDIS_PORT``, ``MAI_STACK_EMULATOR_PORT`` (default: free ones, kept across restarts);
``MAI_STACK_POOL_SLOTS`` (6), ``MAI_STACK_WORKER_CONCURRENCY`` (4), ``MAI_STACK_EMULATOR_LATENCY``
(``2-6``), ``MAI_STACK_READY_WITHIN`` (seconds, 180).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STATE_DIR = Path(os.environ.get("MAI_STACK_DIR") or ROOT / ".stack").resolve()
#: Where Debian installs PostgreSQL's server programs (one folder per major version).
POSTGRES_LIB = Path("/usr/lib/postgresql")
LOOPBACK = "127.0.0.1"
ADMIN_USER = "admin"
POOL = "mai_image_quota"
PACING_REDIS_CONN = "mai_pacing_redis"
WORKERS = ("worker1", "worker2")
#: Python packages of the ``stack`` extra (distribution names), checked before anything starts.
PYTHON_PACKAGES = ("apache-airflow-providers-celery", "celery", "redis")
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


class StackError(Exception):
    """Something the user must fix; the message says what (printed without a traceback)."""


def setting(name: str, default: str) -> str:
    """A ``MAI_STACK_<NAME>`` setting from the environment."""
    return os.environ.get(f"MAI_STACK_{name}") or default


# -- processes ---------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the PID, it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


@dataclass(frozen=True)
class Process:
    """A process we started, named by its PID and start time (so a reused PID is never signalled)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Process:
        """The process running as ``pid`` now."""
        started = start_time(pid)
        if started is None:
            raise StackError(f"process {pid} exited at once")
        return cls(pid, started)

    def alive(self) -> bool:
        """Whether this very process still runs (not ended, not a zombie, PID not reused)."""
        fields = _stat(self.pid)
        return fields is not None and int(fields[19]) == self.started and fields[0] != "Z"

    def signal(self, sig: int) -> None:
        """Send ``sig`` if this very process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(self.pid, sig)


def _all_stats() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            yield int(entry.name), fields


def children_by_parent() -> dict[int, list[int]]:
    """Every process on the machine, grouped under its parent's PID."""
    tree: dict[int, list[int]] = {}
    for pid, fields in _all_stats():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def session_members(leader: Process) -> list[Process]:
    """Processes of the session ``leader`` started (we start each component in its own session):
    they stay in it when their parent dies and they move under init, out of the tree."""
    return [
        Process(pid, int(fields[19]))
        for pid, fields in _all_stats()
        if int(fields[3]) == leader.pid and int(fields[19]) >= leader.started and pid != leader.pid
    ]


def process_tree(pid: int) -> list[Process]:
    """``pid`` and all its descendants (task processes start their own sessions but stay below)."""
    tree = children_by_parent()
    found: list[Process] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        started = start_time(current)
        if started is not None:
            found.append(Process(current, started))
            pending.extend(tree.get(current, []))
    return found


def pss_kib(pids: Iterable[int]) -> int:
    """Proportional set size of these processes together, in KiB (shared pages counted once)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return total


def _decode_address(hex_address: str) -> str:
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, words)}:{int(port, 16)}"


def listening_addresses(pids: Iterable[int]) -> list[str]:
    """The TCP addresses these processes listen on (from /proc/net/tcp and tcp6)."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = _decode_address(fields[1])
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:["):
                address = inodes.get(link[8:-1])
                if address:
                    found.add(address)
    return sorted(found)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (and we may bind it)."""
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def all_ended(processes: list[Process], within: float) -> bool:
    """Wait (bounded) until none of ``processes`` is alive; whether they all ended."""
    return wait_until(lambda: "running" if any(p.alive() for p in processes) else None, within, 0.2) is None


def wait_until(check: Callable[[], str | None], within: float, interval: float = 0.5) -> str | None:
    """Poll ``check`` (None = ready, else why not) until ready or ``within`` seconds; the last reason."""
    deadline = time.monotonic() + within
    while True:
        reason = check()
        if reason is None or time.monotonic() > deadline:
            return reason
        time.sleep(interval)


# -- state -------------------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets), replacing any earlier one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    os.replace(tmp, path)


class Stack:
    """The stack's state folder: ports, secrets, processes, and what is derived from them.

    :param folder: the state folder (default ``.stack/`` in the repository, or ``$MAI_STACK_DIR``).
    """

    COMPONENTS = ("postgres", "redis", "emulator", "api-server", "scheduler", "dag-processor", "triggerer")
    AIRFLOW = ("api-server", "scheduler", "dag-processor", "triggerer", *WORKERS)

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder = folder or STATE_DIR
        self.state_file = folder / "state.json"
        self.logs = folder / "logs"
        self.home = folder / "airflow-home"
        self.output = folder / "out"
        self.state: dict[str, Any] = {}
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    # The values every command reads.

    @property
    def ports(self) -> dict[str, int]:
        """Port of each service: ``api``, ``postgres``, ``redis``, ``emulator``."""
        return self.state.setdefault("ports", {})

    @property
    def secrets(self) -> dict[str, str]:
        """Passwords, keys and the API key, generated once (kept in the 0600 state file)."""
        return self.state.setdefault("secrets", {})

    @property
    def processes(self) -> dict[str, Process]:
        """The process of each component, as recorded (alive or not)."""
        return {name: Process(**p) for name, p in self.state.get("processes", {}).items()}

    @property
    def api_url(self) -> str:
        """The api-server (UI, REST API, execution API)."""
        return f"http://{LOOPBACK}:{self.ports['api']}"

    @property
    def emulator_url(self) -> str:
        """The stack's MAI emulator."""
        return f"http://{LOOPBACK}:{self.ports['emulator']}"

    @property
    def redis_url(self) -> str:
        """Redis with its password, without a database number."""
        return f"redis://:{self.secrets['redis_password']}@{LOOPBACK}:{self.ports['redis']}"

    @property
    def database_url(self) -> str:
        """The metadata database, as SQLAlchemy takes it."""
        password = self.secrets["postgres_password"]
        return f"postgresql+psycopg2://airflow:{password}@{LOOPBACK}:{self.ports['postgres']}/airflow"

    def log_file(self, component: str) -> Path:
        """Where a component's output goes."""
        return self.logs / f"{component}.log"

    def save(self) -> None:
        """Write the state file (mode 0600)."""
        _write_private(self.state_file, json.dumps(self.state, indent=2, sort_keys=True))

    def record(self, name: str, process: Process | None) -> None:
        """Remember (or, with None, forget) the process of a component."""
        processes = self.state.setdefault("processes", {})
        if process is None:
            processes.pop(name, None)
        else:
            processes[name] = {"pid": process.pid, "started": process.started}
        self.save()

    def running(self, name: str) -> Process | None:
        """The component's process if it is alive."""
        process = self.processes.get(name)
        return process if process is not None and process.alive() else None

    def api(self) -> AirflowApi:
        """A REST client logged in as the stack's admin user."""
        return AirflowApi(self.api_url, ADMIN_USER, self.secrets["admin_password"])

    # Setting up.

    def prepare(self) -> None:
        """Choose ports and secrets once (kept across restarts); a port taken by another program
        is replaced, unless the user chose it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # the postgres user walks through it to its own folder
        for folder in (self.logs, self.home, self.output):
            folder.mkdir(parents=True, exist_ok=True)
        for name in ("api", "postgres", "redis", "emulator"):
            chosen = os.environ.get(f"MAI_STACK_{name.upper()}_PORT")
            owner = {"api": "api-server"}.get(name, name)
            ours = self.running(owner) is not None
            if chosen:
                port = int(chosen)
                if not ours and not port_is_free(port):
                    raise StackError(
                        f"port {port} (MAI_STACK_{name.upper()}_PORT, for {name}) is in use by another "
                        "program: stop it or choose another port"
                    )
                self.ports[name] = port
            elif name not in self.ports or (not ours and not port_is_free(self.ports[name])):
                self.ports[name] = free_port()
        for name in ("postgres_password", "redis_password", "api_key", "admin_password"):
            self.secrets.setdefault(name, secrets.token_urlsafe(24))
        self.secrets.setdefault("jwt_secret", secrets.token_urlsafe(32))
        self.secrets.setdefault("api_secret_key", secrets.token_urlsafe(32))
        self.secrets.setdefault("fernet_key", base64.urlsafe_b64encode(os.urandom(32)).decode())
        self.save()
        _write_private(
            self.folder / "passwords.json", json.dumps({ADMIN_USER: self.secrets["admin_password"]})
        )

    def airflow_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of every Airflow process: configuration by variables only."""
        s = self.secrets
        bundles = [
            {
                "name": name,
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(path)},
            }
            for name, path in (("examples", ROOT / "dags"), ("stack-tests", ROOT / "tests/stack/dags"))
        ]
        python_path = [str(SCRIPTS), os.environ.get("PYTHONPATH", "")]
        # Nothing Airflow-related leaks in from the caller's shell (an AIRFLOW_CONN_MAI_DEFAULT
        # exported for the demo would shadow the stack's own connection).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        return {
            **inherited,
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack_hostname.hostname",
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": f"{self.redis_url}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.database_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": setting("WORKER_CONCURRENCY", "4"),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.folder / "passwords.json"),
            **FAILURE_DETECTION,
            "MAI_OUTPUT_BASE": str(self.output),
            **(extra or {}),
        }

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        """Start ``command`` in its own session, output to ``logs/<name>.log``; record its PID."""
        log = self.log_file(name)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {name} starting\n".encode())
            out.flush()
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        process = Process.of(popen.pid)
        self.record(name, process)
        return process

    def wait_healthy(self, name: str, within: float, check: Callable[[], str | None]) -> None:
        """Wait for ``check`` to pass; else a StackError naming the log to read."""
        process = self.processes.get(name)
        exited = False

        def ready() -> str | None:
            nonlocal exited
            if process is not None and not process.alive():
                exited = True
                return None  # stop waiting: it will not get better
            return check()

        reason = wait_until(ready, within)
        if reason is None and not exited:
            return
        log = self.log_file(name)
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        why = "it exited" if exited else f"not healthy within {within:.0f} s: {reason}"
        raise StackError(
            f"{name} did not start ({why}). Read its log: {log}\n" + "\n".join(f"    {line}" for line in tail)
        )


# -- prerequisites -----------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """Folder of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(POSTGRES_LIB.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    raise StackError(
        "PostgreSQL is not installed (no pg_ctl or initdb): apt-get install -y postgresql "
        "(it need not run as a service: the stack starts its own cluster)"
    )


def check_prerequisites() -> None:
    """Fail early, saying what to install, when a program or Python package is missing."""
    import importlib.metadata
    import importlib.util

    postgres_bin()
    if shutil.which("redis-server") is None:
        raise StackError("Redis is not installed (no redis-server): apt-get install -y redis-server")
    missing = [name for name in PYTHON_PACKAGES if not _installed(name)]
    if importlib.util.find_spec("psycopg2") is None:
        missing.append("psycopg2-binary")
    if missing:
        raise StackError(
            f"Python packages missing ({', '.join(missing)}): pip install -e '.[stack]' "
            "(scripts/stack.sh does this for you)"
        )
    celery = tuple(int(p) for p in importlib.metadata.version("celery").split(".")[:2])
    if celery >= (5, 7):
        raise StackError(
            f"celery {importlib.metadata.version('celery')} breaks the celery provider's scheduler "
            "(ImportError: 'retry' from celery.backends.database): pip install 'celery<5.7'"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise StackError("running as root needs runuser (util-linux) to start PostgreSQL as 'postgres'")


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# -- the components ----------------------------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _give_to_postgres(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def start_postgres(stack: Stack, within: float) -> None:
    """A private cluster in ``pg/``: created once (initdb), started with pg_ctl, database ``airflow``."""
    if stack.running("postgres"):
        return
    binaries = postgres_bin()
    data, sockets = stack.folder / "pg" / "data", stack.folder / "pg" / "run"
    log = stack.log_file("postgres")
    for folder in (data.parent, sockets):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.touch()
    _give_to_postgres(data.parent, sockets, log)
    if os.geteuid() == 0:
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(data.parent)])
        if probe.returncode != 0:
            raise StackError(
                f"the postgres user cannot reach {data.parent} (a parent folder is closed to it): "
                "set MAI_STACK_DIR to a folder under one it can traverse, e.g. /tmp/mai-stack"
            )
    if not (data / "PG_VERSION").exists():
        password_file = data.parent / "pwfile"
        _write_private(password_file, stack.secrets["postgres_password"] + "\n")
        _give_to_postgres(password_file)
        try:
            _run(
                _as_postgres(
                    [
                        str(binaries / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "airflow",
                        f"--pwfile={password_file}",
                        "--auth=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                "initdb",
                log,
            )
        finally:
            password_file.unlink(missing_ok=True)
    options = (
        f"-p {stack.ports['postgres']} -c listen_addresses={LOOPBACK} -k {sockets} "
        "-c max_connections=200 -c shared_buffers=64MB"
    )
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
    _run(
        _as_postgres([*pg_ctl, "-w", "-t", "60", "start"]),
        "pg_ctl start",
        log,
    )
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    stack.record("postgres", Process.of(postmaster))
    stack.wait_healthy("postgres", within, lambda: check_postgres(stack))
    import psycopg2

    connection = psycopg2.connect(_libpq(stack, "postgres"))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
            if cursor.fetchone() is None:
                cursor.execute("CREATE DATABASE airflow")
    finally:
        connection.close()


def _libpq(stack: Stack, database: str) -> str:
    return (
        f"host={LOOPBACK} port={stack.ports['postgres']} user=airflow dbname={database} "
        f"password={stack.secrets['postgres_password']} connect_timeout=3"
    )


def _run(command: list[str], what: str, log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300, check=False
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StackError(
            f"{what} failed (exit {result.returncode}); read {log}\n" + "\n".join(f"    {t}" for t in tail)
        )


def check_postgres(stack: Stack) -> str | None:
    import psycopg2

    try:
        psycopg2.connect(_libpq(stack, "postgres")).close()
    except psycopg2.Error as exc:
        return f"no connection: {str(exc).strip()[:200]}"
    return None


def start_redis(stack: Stack, within: float) -> None:
    """redis-server on its port, password from a 0600 file, nothing persisted."""
    if stack.running("redis"):
        return
    folder = stack.folder / "redis"
    folder.mkdir(mode=0o700, exist_ok=True)
    config = folder / "redis.conf"
    _write_private(
        config,
        f"port {stack.ports['redis']}\nbind {LOOPBACK}\nprotected-mode yes\ndaemonize no\n"
        f'save ""\nappendonly no\ndir {folder}\nrequirepass {stack.secrets["redis_password"]}\n',
    )
    stack.start("redis", [shutil.which("redis-server") or "redis-server", str(config)], dict(os.environ))
    stack.wait_healthy("redis", within, lambda: check_redis(stack))


def check_redis(stack: Stack) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(f"{stack.redis_url}/0", socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"no PING answer: {type(exc).__name__}"
    return None


def start_emulator(stack: Stack, within: float) -> None:
    """The MAI emulator with scaled latency; its API key reaches it through the environment only."""
    if stack.running("emulator"):
        return
    env = {**os.environ, "MAI_STACK_API_KEY": stack.secrets["api_key"]}
    stack.start("emulator", [sys.executable, str(Path(__file__)), "emulator"], env)
    stack.wait_healthy("emulator", within, lambda: check_http(f"{stack.emulator_url}/healthz"))


def run_emulator() -> int:
    """(The ``emulator`` subcommand, run by ``up``.) The emulator CLI with the key from the environment,
    so that it never shows on a command line."""
    from airflow_provider_mai.emulator.__main__ import main

    return main(
        [
            "--port",
            str(Stack().ports["emulator"]),
            "--api-key",
            os.environ["MAI_STACK_API_KEY"],
            "--latency",
            setting("EMULATOR_LATENCY", "2-6"),
        ]
    )


def check_http(url: str) -> str | None:
    try:
        urllib.request.urlopen(url, timeout=3).close()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {url}"
    except OSError as exc:
        return f"no answer from {url} ({type(exc).__name__})"
    return None


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
    return stack.airflow_env({"MAI_STACK_HOSTNAME": f"stack-{worker}", "TMPDIR": str(tmp)})


def migrate(stack: Stack) -> None:
    """``airflow db migrate`` once per Airflow version (about 10 s on PostgreSQL)."""
    import importlib.metadata

    version = importlib.metadata.version("apache-airflow")
    if stack.state.get("migrated") == version:
        return
    command = [sys.executable, "-m", "airflow", "db", "migrate"]
    _run(command, "airflow db migrate", stack.log_file("migrate"), stack.airflow_env())
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
        env = worker_env(stack, name) if name in WORKERS else stack.airflow_env()
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


# -- REST API ----------------------------------------------------------------------------------------


class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``), with a bearer token.

    :param base_url: the api-server, e.g. ``http://127.0.0.1:8080``.
    :param username: a simple-auth-manager user.
    :param password: that user's password.
    :param timeout: seconds per request.
    """

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self._credentials = {"username": username, "password": password}
        self._token: str | None = None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r})"

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        """Send one request; the decoded JSON answer (None for an empty one). HTTPError otherwise."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            if self._token is None:
                self._token = self.request("POST", "/auth/token", self._credentials, auth=False)[
                    "access_token"
                ]
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: Any) -> Any:
        """GET with query parameters."""
        return self.request("GET", path + (f"?{urllib.parse.urlencode(query)}" if query else ""))

    def _put(self, collection: str, key: str, body: dict[str, Any]) -> None:
        try:
            self.request("POST", f"/api/v2/{collection}", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self.request("PATCH", f"/api/v2/{collection}/{urllib.parse.quote(key)}", body)

    def put_connection(self, connection: dict[str, Any]) -> None:
        """Create or replace a connection."""
        self._put("connections", connection["connection_id"], connection)

    def put_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create a pool or set its size."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        self._put("pools", name, body)

    def dag_exists(self, dag_id: str) -> bool:
        """Whether the DAG is parsed and known to the api-server."""
        try:
            self.get(f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, **run: Any) -> dict[str, Any]:
        """Unpause ``dag_id`` and start a run, logical date now (so ``{{ ds }}`` renders); the new run
        (``dag_run_id``, ``state``...). ``run`` adds fields of the request body."""
        from datetime import datetime, timezone

        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        body = {"logical_date": datetime.now(timezone.utc).isoformat(), "conf": conf or {}, **run}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """A DAG run (``state``, ``start_date``, ``end_date``...)."""
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")

    def wait_for_run(self, dag_id: str, run_id: str, within: float, interval: float = 1.0) -> dict[str, Any]:
        """Poll the run until it ends (success or failed); TimeoutError after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {run['state']} after {within:.0f} s")
            time.sleep(interval)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (all pages), mapped ones one by one."""
        found: list[dict[str, Any]] = []
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances"
        while True:
            page = self.get(path, limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def result(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task instance's XCom ``return_value``, or None when it has none."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}"
            "/xcomEntries/return_value"
        )
        try:
            value = self.get(path, map_index=map_index)["value"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return json.loads(value) if isinstance(value, str) else value


def images_of_run(
    api: AirflowApi, dag_id: str, run_id: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(task instance, MAI result) for every image the run made."""
    for ti in api.task_instances(dag_id, run_id):
        if ti["state"] != "success":
            continue
        result = api.result(dag_id, run_id, ti["task_id"], ti["map_index"])
        if isinstance(result, dict) and "sha256" in result and "uri" in result:
            yield ti, result


# -- commands ----------------------------------------------------------------------------------------


def up() -> int:
    """Start whatever is not running; print where the UI is."""
    started = time.monotonic()
    within = float(setting("READY_WITHIN", "180"))
    check_prerequisites()
    stack = Stack()
    stack.prepare()
    start_postgres(stack, within)
    start_redis(stack, within)
    start_emulator(stack, within)
    start_airflow(stack, within)
    configure(stack, within)
    print(f"Stack up in {time.monotonic() - started:.1f} s (state in {stack.folder})")
    passwords = stack.folder / "passwords.json"
    print(f"  Airflow UI   {stack.api_url}  (user {ADMIN_USER}, password in {passwords})")
    print(f"  MAI emulator {stack.emulator_url}  (connection mai_default; pool {POOL})")
    print(f"  images       {stack.output}")
    print(f"  logs         {stack.logs}  and  {stack.home / 'logs'}")
    print("  next: bash scripts/stack.sh trigger mai_product_batch   ...   bash scripts/stack.sh down")
    return 0


def status(as_json: bool) -> int:
    """Each component: PID, health, listening addresses, memory. Exit 1 unless all are healthy."""
    stack = Stack()
    if not stack.state.get("processes"):
        print("The stack is not up (bash scripts/stack.sh up).")
        return 1
    report = {}
    for name in (*Stack.COMPONENTS, *WORKERS):
        process = stack.running(name)
        tree = [p.pid for p in process_tree(process.pid)] if process else []
        report[name] = {
            "pid": process.pid if process else None,
            "health": (component_health(stack, name) or "healthy") if process else "not running",
            "processes": len(tree),
            "pss_mib": round(pss_kib(tree) / 1024, 1),
            "listening": listening_addresses(tree),
            "log": str(stack.log_file(name)),
        }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for name, row in report.items():
            print(
                f"{name:14} pid {row['pid'] or '-':>7}  {row['health']:<40.40} {row['processes']:3} procs "
                f"{row['pss_mib']:8.1f} MiB  {' '.join(row['listening']) or '-'}"
            )
        total = sum(r["pss_mib"] for r in report.values())
        print(f"{'total':14} {'':49} {sum(r['processes'] for r in report.values()):3} procs {total:8.1f} MiB")
        print(f"UI: {stack.api_url} (user {ADMIN_USER}, password in {stack.folder / 'passwords.json'})")
    return 0 if all(r["health"] == "healthy" for r in report.values()) else 1


def trigger(dag_id: str, conf_text: str | None, within: float) -> int:
    """Run a DAG through the REST API, wait for it, print where each image landed and who made it."""
    try:
        conf = json.loads(conf_text) if conf_text else {}
    except ValueError as exc:
        raise StackError(f"CONF_JSON is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise StackError('CONF_JSON must be a JSON object, e.g. \'{"products": ["a mug"]}\'')
    stack = Stack()
    if stack.running("api-server") is None:
        raise StackError("the stack is not up: bash scripts/stack.sh up")
    api = stack.api()
    if not api.dag_exists(dag_id):
        raise StackError(f"no DAG {dag_id!r} (is it parsed? read {stack.log_file('dag-processor')})")
    started = time.monotonic()
    run = api.trigger(dag_id, conf)
    run_id = run["dag_run_id"]
    print(f"Triggered {dag_id}, run {run_id}; waiting (up to {within:.0f} s) ...", flush=True)
    run = api.wait_for_run(dag_id, run_id, within)
    by_worker: dict[str, int] = {}
    for ti, result in images_of_run(api, dag_id, run_id):
        index = f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""
        print(f"  {ti['task_id'] + index:16} {ti['hostname']:16} try {ti['try_number']}  {result['uri']}")
        by_worker[ti["hostname"]] = by_worker.get(ti["hostname"], 0) + 1
    made = ", ".join(f"{count} by {host}" for host, count in sorted(by_worker.items())) or "no images"
    print(f"Run {run['state']} in {time.monotonic() - started:.1f} s: {made}.")
    if run["state"] != "success":
        print(f"Task logs: {stack.home / 'logs' / f'dag_id={dag_id}'}", file=sys.stderr)
        return 1
    return 0


def down(purge: bool, stack: Stack | None = None) -> int:
    """Stop every process we started, by PID: Airflow first (in parallel), then the services."""
    started = time.monotonic()
    stack = stack or Stack()
    groups = [list(Stack.AIRFLOW), ["emulator", "redis"], ["postgres"]]
    for group in groups:
        trees = {
            name: list({q.pid: q for q in [*process_tree(p.pid), *session_members(p)]}.values())
            for name in group
            if (p := stack.running(name)) is not None
        }
        # PostgreSQL's fast shutdown is SIGINT; SIGTERM would wait for every client to leave.
        for name, tree in trees.items():
            tree[0].signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        everyone = [p for tree in trees.values() for p in tree]
        if not all_ended(everyone, 20):
            for process in everyone:  # a warm shutdown that hangs, or children left behind
                process.signal(signal.SIGKILL)
            all_ended(everyone, 10)
        for name in trees:
            stack.record(name, None)
    stack.state["processes"] = {}
    if stack.state_file.exists():
        stack.save()
    print(f"Stack down in {time.monotonic() - started:.1f} s.")
    if purge and stack.folder.exists():
        shutil.rmtree(stack.folder)
        print(f"Removed {stack.folder}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/stack.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack (only what is not running)")
    status_parser = commands.add_parser("status", help="PID, health, ports and memory of each component")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    trigger_parser = commands.add_parser("trigger", help="run a DAG and print where its images landed")
    trigger_parser.add_argument("dag_id")
    trigger_parser.add_argument("conf", nargs="?", help="the run's conf, a JSON object")
    trigger_parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait (1800)")
    down_parser = commands.add_parser("down", help="stop every process of the stack")
    down_parser.add_argument("--purge", action="store_true", help="also delete the state folder")
    commands.add_parser("emulator", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up()
        if args.command == "status":
            return status(args.json)
        if args.command == "trigger":
            return trigger(args.dag_id, args.conf, args.timeout)
        if args.command == "down":
            return down(args.purge)
        return run_emulator()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        started = Stack()
        if args.command == "up" and any(started.running(name) for name in started.processes):
            print("What did start is still running: bash scripts/stack.sh status | down", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
