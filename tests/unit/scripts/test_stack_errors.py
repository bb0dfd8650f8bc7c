"""scripts/stack.py's errors, without a stack: each says what to install, which setting, which log."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import stack as stack_script

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT


sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture
def stack(tmp_path: Path) -> stack_script.Stack:
    return stack_script.Stack(tmp_path / "state")


@pytest.mark.parametrize(
    ("missing", "advice"),
    [
        ("redis-server", "apt-get install -y redis-server"),
        ("pg_ctl", "apt-get install -y postgresql"),
    ],
)
def test_a_missing_program_names_the_package(monkeypatch, tmp_path, missing, advice):
    real_which = stack_script.shutil.which
    monkeypatch.setattr(
        stack_script.shutil, "which", lambda name: None if name == missing else real_which(name)
    )
    monkeypatch.setattr(stack_script, "POSTGRES_LIB", tmp_path)  # no Debian PostgreSQL there either
    with pytest.raises(stack_script.StackError, match=advice):
        stack_script.check_prerequisites()


def test_a_chosen_port_that_is_busy_is_refused(stack, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MAI_STACK_API_PORT", str(port))
        with pytest.raises(stack_script.StackError, match=rf"port {port} \(MAI_STACK_API_PORT, for api\)"):
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
    with pytest.raises(stack_script.StackError) as error:
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
            stack_script.StackError, match=r"emulator did not start \(not healthy within 1 s: nope\)"
        ):
            stack.wait_healthy("emulator", 1, lambda: "nope")
    finally:
        stack_script.down(purge=False, stack=stack)
    assert stack.running("emulator") is None


def test_commands_on_a_stack_that_is_not_up(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(stack_script, "STATE_DIR", tmp_path / "none")
    assert stack_script.main(["status"]) == 1
    assert "not up" in capsys.readouterr().out
    assert stack_script.main(["trigger", "mai_product_batch"]) == 2
    assert "the stack is not up: bash scripts/stack.sh up" in capsys.readouterr().err
