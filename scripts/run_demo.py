"""Run the ``mai_generate_then_edit`` example DAG end to end on real Airflow, offline.

Starts the embedded MAI emulator, points the ``mai_default`` connection at it (an
``AIRFLOW_CONN_MAI_DEFAULT`` variable), runs ``airflow dags test`` on a local SQLite metadata
database, prints where the generated and edited PNGs landed, and stops the emulator.

With ``--ui`` it then starts Airflow's api-server on 127.0.0.1 (the provider's UI plugin loaded),
prints the URL and a login, and serves the images in Airflow's UI until Ctrl-C.

Airflow runs by its console script (``.venv/bin/airflow``), never as ``python -m airflow``: ``-m``
puts the working directory first on ``sys.path``, and in a checkout that directory holds the
``airflow_provider_mai.egg-info`` an editable install leaves there, so Airflow would find the
provider twice and report "Plugin 'mai_images' already registered" as a plugin import error.

Environment: ``MAI_OUTPUT_BASE`` (default ``./out``), ``AIRFLOW_HOME`` (default ``./.airflow-home``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "mai_generate_then_edit"
#: How long the api-server may take to answer its health check.
UI_READY_WITHIN = 120.0
#: Airflow's CLI, beside this interpreter (see the module's docstring for why not ``-m airflow``).
AIRFLOW = [str(Path(sys.executable).with_name("airflow"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ui", action="store_true", help="then show the images in Airflow's UI until Ctrl-C")
    parser.add_argument(
        "--port", type=int, default=8080, help="the UI's port on 127.0.0.1 (default 8080; 0: any free port)"
    )
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT even where a shell started us with it ignored) end the demo as Ctrl-C
    # does, so that the processes it started are stopped by their PIDs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    from airflow_provider_mai.emulator import MaiEmulator

    output_base = Path(os.environ.get("MAI_OUTPUT_BASE") or ROOT / "out").resolve()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or ROOT / ".airflow-home").resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MAI_OUTPUT_BASE": str(output_base),
    }
    started = time.monotonic()
    print(f"Airflow home: {airflow_home} (SQLite metadata database)", flush=True)
    migrate_database(airflow_home, env)
    ready = time.monotonic()

    with MaiEmulator() as emulator:
        print(f"MAI emulator running at {emulator.url}", flush=True)
        env["AIRFLOW_CONN_MAI_DEFAULT"] = emulator.connection_uri()
        log_path = output_base / "last-run.log"
        output_base.mkdir(parents=True, exist_ok=True)
        print(f"Running DAG {DAG_ID} with `airflow dags test` ...", flush=True)
        conf = json.dumps({"output_base": str(output_base)})
        with open(log_path, "w") as log:
            result = subprocess.run(
                [*AIRFLOW, "dags", "test", DAG_ID, "--conf", conf],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
    print(emulator.summary(), flush=True)  # what the run spent

    lines = log_path.read_text(errors="replace").splitlines()
    landed = [line for line in lines if line.startswith("MAI ") and " image: " in line]
    if result.returncode != 0 or len(landed) != 2 or "state=success" not in "\n".join(lines):
        print("\n".join(lines[-40:]))
        print(f"\nThe DAG run failed (exit {result.returncode}); full log: {log_path}", file=sys.stderr)
        return 1
    print("\n".join(landed))
    done = time.monotonic()
    print(
        f"Done in {done - started:.1f} s (database {ready - started:.1f} s, DAG run {done - ready:.1f} s)."
        f" Sidecars (.json) sit beside each PNG; log: {log_path}"
    )
    if not args.ui:
        print("See them in Airflow's UI (gallery, task tabs): bash scripts/demo.sh --ui", flush=True)
        return 0
    return serve_ui(env, airflow_home, args.port, _run_id_in(lines) or _newest_run_id(env))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def migrate_database(airflow_home: Path, env: dict[str, str]) -> None:
    """``airflow db migrate``, unless this Airflow release already migrated this home's database.

    A migration of a current database still costs an Airflow start-up (seconds, tens of seconds on
    a busy machine); a stamp beside the database records which release and database it was.

    :param airflow_home: the demo's Airflow home (its SQLite database, ``airflow.db``, lives there).
    :param env: the environment Airflow runs with.
    """
    stamp = airflow_home / ".mai-demo-migrated"
    database = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"sqlite:///{airflow_home / 'airflow.db'}"
    key = f"apache-airflow-core {metadata.version('apache-airflow-core')} {database}"
    sqlite_file = Path(database.removeprefix("sqlite:///")) if database.startswith("sqlite:///") else None
    if stamp.exists() and stamp.read_text() == key and (sqlite_file is None or sqlite_file.exists()):
        return
    stamp.unlink(missing_ok=True)
    subprocess.run([*AIRFLOW, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(key)


def _port_or_free(port: int) -> int:
    """``port`` if it is free on 127.0.0.1, else (or for 0) a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            print(f"Port {port} is taken; using {sock.getsockname()[1]}", flush=True)
        return sock.getsockname()[1]


def _run_id_in(log_lines: list[str]) -> str | None:
    """The run id that ``airflow dags test`` logged when the run finished (no second Airflow start)."""
    for line in reversed(log_lines):
        found = re.search(r"DagRun Finished: dag_id=\S+, .*?run_id=([^,\s]+),", line)
        if found:
            return found[1]
    return None


def _newest_run_id(env: dict[str, str]) -> str | None:
    """The newest run of the demo's DAG, asked of Airflow (when its log did not say)."""
    listed = subprocess.run(
        [*AIRFLOW, "dags", "list-runs", DAG_ID, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # Airflow may print warnings first: the JSON is the last line that is a list.
    for line in reversed(listed.stdout.splitlines()):
        if line.startswith("["):
            runs = json.loads(line)
            return max(runs, key=lambda run: run.get("start_date") or "")["run_id"] if runs else None
    return None


def serve_ui(env: dict[str, str], airflow_home: Path, port: int, run_id: str | None) -> int:
    """Airflow's api-server on 127.0.0.1 with one user, until Ctrl-C; stopped by its PID.

    :param env: the environment the DAG run had.
    :param airflow_home: the demo's Airflow home (the login's password file goes there).
    :param port: the port on 127.0.0.1 (taken: another free one).
    :param run_id: the run whose task tab to print, if known.
    """
    port = _port_or_free(port)
    password = secrets.token_urlsafe(12)
    passwords = airflow_home / "mai_demo_passwords.json"
    passwords.touch(mode=0o600)
    passwords.chmod(0o600)
    passwords.write_text(json.dumps({"admin": password}))
    url = f"http://127.0.0.1:{port}"
    ui_env = {
        **env,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    log_path = airflow_home / "api-server.log"
    print(f"Starting Airflow's api-server on {url} (log: {log_path}) ...", flush=True)
    with open(log_path, "wb") as log:
        # Its own session: Ctrl-C reaches this script, which then stops the server by its PID.
        server = subprocess.Popen(
            [*AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=ui_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if not _wait_healthy(url, server):
            print(f"The api-server did not start; see {log_path}", file=sys.stderr)
            return 1
        print(f"\nMAI images in Airflow's UI: {url}/plugin/mai-images", flush=True)
        if run_id:
            tab = f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/edit/plugin/mai-image"
            print(f"The edit task's image tab:  {tab}", flush=True)
        print(f"Sign in as admin, password {password}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        server.wait()
        print(f"The api-server exited ({server.returncode}); see {log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the api-server ...", flush=True)
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def _wait_healthy(url: str, server: subprocess.Popen) -> bool:
    deadline = time.monotonic() + UI_READY_WITHIN
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2).close()
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    return False


if __name__ == "__main__":
    sys.exit(main())
