"""scripts/stack/ without a stack: its errors (what to install, which setting, which log), its
help, and what ``up`` takes from the user (DAG folder, connections), checked before anything starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
sys.path.insert(0, str(ROOT / "scripts"))

from stack import airflow as stack_airflow  # noqa: E402  (scripts/stack/)
from stack import cli, config, services, state, user  # noqa: E402


@pytest.fixture
def stack(tmp_path: Path) -> state.Stack:
    return state.Stack(tmp_path / "state")


@pytest.mark.parametrize(
    ("missing", "advice"),
    [
        ("redis-server", "apt-get install -y redis-server"),
        ("pg_ctl", "apt-get install -y postgresql"),
    ],
)
def test_a_missing_program_names_the_package(monkeypatch, tmp_path, missing, advice):
    real_which = services.shutil.which
    monkeypatch.setattr(services.shutil, "which", lambda name: None if name == missing else real_which(name))
    monkeypatch.setattr(services, "POSTGRES_LIB", tmp_path)  # no Debian PostgreSQL there either
    with pytest.raises(config.StackError, match=advice):
        services.check_prerequisites()


def test_a_chosen_port_that_is_busy_is_refused(stack, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MAI_STACK_API_PORT", str(port))
        with pytest.raises(config.StackError, match=rf"port {port} \(MAI_STACK_API_PORT, for api\)"):
            stack.prepare()


def test_a_picked_port_taken_meanwhile_is_replaced(stack):
    stack.prepare()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", stack.ports["redis"]))
        busy.listen()
        stack.prepare()  # nobody chose it: a free one instead
        assert stack.ports["redis"] != busy.getsockname()[1]
    assert oct(stack.state_file.stat().st_mode & 0o777) == "0o600"  # it holds the secrets
    assert oct((stack.folder / "passwords.json").stat().st_mode & 0o777) == "0o600"


def test_a_component_that_exits_names_its_log(stack):
    stack.prepare()
    command = [sys.executable, "-c", "print('cannot bind: address in use'); raise SystemExit(3)"]
    stack.start("scheduler", command, {})
    with pytest.raises(config.StackError) as error:
        stack.wait_healthy("scheduler", 30, lambda: "not yet")
    message = str(error.value)
    assert "scheduler did not start (it exited)" in message
    assert str(stack.log_file("scheduler")) in message
    assert "cannot bind: address in use" in message  # the log's last lines come along


def test_a_component_that_stays_unhealthy_names_its_log(stack):
    stack.prepare()
    stack.start("emulator", [sys.executable, "-c", "import time; time.sleep(30)"], {})
    try:
        with pytest.raises(
            config.StackError, match=r"emulator did not start \(not healthy within 1 s: nope\)"
        ):
            stack.wait_healthy("emulator", 1, lambda: "nope")
    finally:
        cli.down(purge=False, stack=stack)
    assert stack.running("emulator") is None


def test_commands_on_a_stack_that_is_not_up(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(state, "STATE_DIR", tmp_path / "none")
    assert cli.main(["status"]) == 1
    assert "not up" in capsys.readouterr().out
    assert cli.main(["trigger", "mai_product_batch"]) == 2
    assert "the stack is not up: bash scripts/stack.sh up" in capsys.readouterr().err
    assert cli.main(["restart", "triggerer"]) == 2
    assert "the stack is not up: bash scripts/stack.sh up" in capsys.readouterr().err


def test_restart_takes_airflow_components_only(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["restart", "postgres"])
    assert exited.value.code == 2
    assert "invalid choice: 'postgres'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["up", "--help"], ["up", "-h"], ["trigger", "--help"], ["restart", "--help"], ["--help"]]
)
def test_help_never_installs(tmp_path, args):
    venv = tmp_path / "venv"  # no virtualenv there: an install would create it
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/stack.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAI_VENV": str(venv)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: scripts/stack.sh")
    assert "Installing" not in result.stdout + result.stderr
    assert not venv.exists()
    if args[0] == "up":
        assert "--dags DIR" in result.stdout and "--connections-file FILE" in result.stdout


def test_the_dag_folder_comes_from_the_option_then_the_environment(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    env = {"MAI_STACK_DAGS_FOLDER": str(theirs), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags")}
    assert user.dags_choice(str(mine), env) == user.DagsChoice(mine, "--dags")
    assert user.dags_choice(None, env) == user.DagsChoice(theirs, "MAI_STACK_DAGS_FOLDER")
    # Airflow's own variable is honoured, not dropped - unless it names the examples already there.
    honoured = user.dags_choice(None, {"AIRFLOW__CORE__DAGS_FOLDER": str(theirs)})
    assert honoured == user.DagsChoice(theirs, "AIRFLOW__CORE__DAGS_FOLDER")
    assert user.dags_choice(None, {"AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags")}) is None
    assert user.dags_choice(None, {}) is None  # a running stack keeps its folder
    assert user.dags_choice("", env) == user.DagsChoice(None, "--dags")  # the examples only
    assert user.dags_choice(str(ROOT / "dags"), {}) == user.DagsChoice(None, "--dags")


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("missing", r"--dags .*missing: no such folder"),
        ("repo", r"holds the stack's own DAGs .*bundle examples"),
        ("egg", r"holds package metadata \(mine\.egg-info\): Airflow would load that package twice"),
    ],
)
def test_a_dag_folder_that_cannot_work_is_refused(tmp_path, folder, message):
    (tmp_path / "egg" / "mine.egg-info").mkdir(parents=True)
    path = {"missing": str(tmp_path / "missing"), "repo": str(ROOT), "egg": str(tmp_path / "egg")}[folder]
    with pytest.raises(config.StackError, match=message):
        user.dags_choice(path, {})


def test_the_user_bundle_is_what_airflow_loads(stack, tmp_path):
    stack.prepare()
    stack.state["dags_folder"] = str(tmp_path)
    env = stack_airflow.airflow_env(stack)
    # The bundles alone are asked for: no database (the stack's is PostgreSQL, whose driver only the
    # stack's install brings).
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow.db'}"
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airflow.dag_processing.bundles.manager import DagBundlesManager as M;"
            "print({b.name: str(b.path) for b in M().get_all_dag_bundles()})",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=stack.folder,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == repr(
        {
            "examples": str(ROOT / "dags"),
            "stack-tests": str(ROOT / "tests/stack/dags"),
            "user-dags": str(tmp_path),
        }
    )
    assert env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] == "5"  # a new file waits seconds, not 300
    assert env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"] == "20"
    cli.down(purge=False, stack=stack)  # `up` options last until `down`
    assert state.Stack(stack.folder).dags_folder is None


def test_connections_from_options_and_a_file_become_rest_bodies(tmp_path):
    file = tmp_path / "connections.json"
    file.write_text(
        json.dumps(
            {
                "shop_api": {
                    "conn_type": "http",
                    "host": "api.example.test",
                    "password": "pw1",
                    "extra": {"a": 1},
                },
                "shop_db": "postgres://old@db.example.test/old",
            }
        )
    )
    file.chmod(0o600)
    raw = user.read_connections(
        ["shop_db=postgres://alice:s3cr%40t@db.example.test:5432/shop?sslmode=require"], [str(file)]
    )
    bodies = {b["connection_id"]: b for b in user.rest_connections(raw, tmp_path / "home")}
    assert bodies["shop_db"] | {"description": None} == {
        "connection_id": "shop_db",
        "conn_type": "postgres",
        "description": None,
        "host": "db.example.test",
        "login": "alice",
        "password": "s3cr@t",
        "schema": "shop",
        "port": 5432,
        "extra": json.dumps({"sslmode": "require"}),
    }  # the option replaced the file's definition
    assert (bodies["shop_api"]["host"], bodies["shop_api"]["password"]) == ("api.example.test", "pw1")
    assert json.loads(bodies["shop_api"]["extra"]) == {"a": 1}


@pytest.mark.parametrize(
    ("options", "content", "message"),
    [
        (["postgres://u:hunter2@db/x"], None, r"--connection expects ID=URI"),
        (["bad id!=http://h"], None, r"'bad id!' is not a connection id"),
        (["mai_pacing_redis=redis://h"], None, r"mai_pacing_redis is the stack's own connection"),
        ([], "{not json", r"--connections-file .*: not JSON"),
        ([], '["a"]', r"expected a JSON object"),
        ([], '{"x": {"conn_type": "http", "pasword": "hunter2"}}', r"connection x: unknown fields pasword"),
        ([], '{"x": {"host": "h", "password": "hunter2"}}', r"connection x: conn_type is missing"),
    ],
)
def test_bad_connections_are_refused_without_their_secrets(tmp_path, options, content, message):
    files = []
    if content is not None:
        (tmp_path / "c.json").write_text(content)
        files.append(str(tmp_path / "c.json"))
    with pytest.raises(config.StackError, match=message) as error:
        user.read_connections(options, files)
    assert "hunter2" not in str(error.value)


def test_a_uri_airflow_cannot_read_is_named_not_quoted(tmp_path):
    raw = user.read_connections(["broken=http://user:hunter2@a://b://c"], [])
    with pytest.raises(config.StackError, match=r"connection broken: Airflow cannot read it") as error:
        user.rest_connections(raw, tmp_path / "home")
    assert "hunter2" not in str(error.value)
