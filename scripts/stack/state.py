"""The stack's state folder (``.stack/`` or ``$MAI_STACK_DIR``): ports, secrets (mode 0600), the
processes it started, their logs; starting a component and waiting for it to be healthy."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .config import ADMIN_USER, LOOPBACK, STATE_DIR, WORKERS, StackError
from .processes import (
    Process,
    all_ended,
    free_port,
    port_is_free,
    process_tree,
    session_members,
    wait_until,
)
from .rest import AirflowApi


def write_private(path: Path, text: str) -> None:
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
        self._api: AirflowApi | None = None
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
    def dags_folder(self) -> Path | None:
        """The user's own DAG folder (``up --dags``) the Airflow components run with, if any."""
        folder = self.state.get("dags_folder")
        return Path(folder) if folder else None

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
        write_private(self.state_file, json.dumps(self.state, indent=2, sort_keys=True))

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
        """A REST client logged in as the stack's admin user (one per state object: one token)."""
        if self._api is None:
            self._api = AirflowApi(self.api_url, ADMIN_USER, self.secrets["admin_password"])
        return self._api

    def stop(self, names: Iterable[str]) -> None:
        """Stop these components by PID, together: each process tree and session gets SIGTERM
        (PostgreSQL SIGINT: its fast shutdown; SIGTERM would wait for every client to leave), and
        SIGKILL whatever still runs 20 s later (a warm shutdown that hangs, children left behind)."""
        trees = {
            name: list({q.pid: q for q in [*process_tree(p.pid), *session_members(p)]}.values())
            for name in names
            if (p := self.running(name)) is not None
        }
        for name, tree in trees.items():
            tree[0].signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        everyone = [p for tree in trees.values() for p in tree]
        if not all_ended(everyone, 20):
            for process in everyone:
                process.signal(signal.SIGKILL)
            all_ended(everyone, 10)
        for name in trees:
            self.record(name, None)

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
        write_private(
            self.folder / "passwords.json", json.dumps({ADMIN_USER: self.secrets["admin_password"]})
        )

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
