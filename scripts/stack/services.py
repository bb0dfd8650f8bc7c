"""The services under Airflow, each our own process on loopback: PostgreSQL (a private cluster),
Redis (broker and pacing schedule) and the MAI emulator; what they need installed; their health."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .config import LOOPBACK, StackError, python_path, setting
from .processes import Process, run_logged
from .state import Stack, write_private

#: Where Debian installs PostgreSQL's server programs (one folder per major version).
POSTGRES_LIB = Path("/usr/lib/postgresql")
#: Python packages of the ``stack`` extra (distribution names), checked before anything starts.
PYTHON_PACKAGES = ("apache-airflow-providers-celery", "celery", "redis")


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
        write_private(password_file, stack.secrets["postgres_password"] + "\n")
        _give_to_postgres(password_file)
        try:
            run_logged(
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
    run_logged(
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
    write_private(
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
    """The MAI emulator with scaled latency and a quota; its API key reaches it through the
    environment only."""
    if stack.running("emulator"):
        return
    stack.state["emulator_rpm"] = emulator_rpm()  # what it enforces: mai_default paces to it
    stack.save()
    env = {
        **os.environ,
        "PYTHONPATH": python_path(),
        "MAI_STACK_API_KEY": stack.secrets["api_key"],
    }
    stack.start("emulator", [sys.executable, "-m", "stack", "emulator"], env)
    stack.wait_healthy("emulator", within, lambda: check_http(f"{stack.emulator_url}/healthz"))


def emulator_rpm() -> int | None:
    """The quota the stack's emulator enforces, requests per minute per deployment
    (``MAI_STACK_EMULATOR_RPM``, default 60; 0: none). ``mai_default`` paces to it."""
    text = setting("EMULATOR_RPM", "60")
    try:
        rpm = int(text)
    except ValueError:
        raise StackError(
            f"MAI_STACK_EMULATOR_RPM must be a whole number of requests a minute, got {text!r}"
        ) from None
    if rpm < 0:
        raise StackError(f"MAI_STACK_EMULATOR_RPM must be 0 (no quota) or more, got {rpm}")
    return rpm or None


def run_emulator() -> int:
    """(The ``emulator`` subcommand, run by ``up``.) The emulator CLI with the key from the environment,
    so that it never shows on a command line."""
    from airflow_provider_mai.emulator.__main__ import main

    stack = Stack()
    rpm = stack.state.get("emulator_rpm")
    return main(
        [
            "--port",
            str(stack.ports["emulator"]),
            "--api-key",
            os.environ["MAI_STACK_API_KEY"],
            "--latency",
            setting("EMULATOR_LATENCY", "2-6"),
            *(["--rpm", str(rpm)] if rpm else []),
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
