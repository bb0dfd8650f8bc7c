"""scripts/stack.sh itself: loopback only, idempotent ``up``, clear errors, no secret in any log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stack.conftest import config, processes, run_dag, stack_command, state

pytestmark = pytest.mark.stack


def test_every_component_listens_on_loopback_only(stack):
    status = json.loads(stack_command("status", "--json").stdout)
    assert {name: row["health"] for name, row in status.items()} == {
        name: "healthy" for name in (*stack.COMPONENTS, *config.WORKERS)
    }
    listening = [address for row in status.values() for address in row["listening"]]
    assert listening and all(address.startswith("127.0.0.1:") for address in listening), listening
    for name, port in (
        ("api-server", "api"),
        ("postgres", "postgres"),
        ("redis", "redis"),
        ("emulator", "emulator"),
    ):
        assert f"127.0.0.1:{stack.ports[port]}" in status[name]["listening"]
    for name in ("scheduler", "dag-processor", "triggerer", *config.WORKERS):  # no log servers
        assert status[name]["listening"] == []


def test_no_secret_on_any_command_line(stack):
    # Command lines are world-readable (ps, /proc/*/cmdline): secrets travel in 0600 files and the
    # environment only.
    started = [
        p
        for name in (*stack.COMPONENTS, *config.WORKERS)
        for p in processes.process_tree(stack.running(name).pid)
    ]
    assert len(started) > 20
    command_lines = [Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in started if p.alive()]
    assert [
        n for n, secret in stack.secrets.items() if any(secret.encode() in c for c in command_lines)
    ] == []


def test_up_on_a_running_stack_starts_nothing(stack):
    before = state.Stack().processes
    result = stack_command("up")
    assert result.returncode == 0, result.stderr
    assert state.Stack().processes == before


def test_no_plugin_import_errors(api):
    # Every component runs from the state folder: one started in the repository would find the
    # editable install's egg-info there as a second copy of the provider ("Plugin 'mai_images'
    # already registered").
    assert api.get("/api/v2/plugins/importErrors") == {"import_errors": [], "total_entries": 0}
    names = [plugin["name"] for plugin in api.pages("/api/v2/plugins", "plugins")]
    assert names.count("mai_images") == 1


def test_mai_default_is_paced_to_its_emulators_quota(stack, api):
    connection = api.get("/api/v2/connections/mai_default")
    extra = json.loads(connection["extra"])
    assert connection["host"] == stack.emulator_url
    if not stack.state["emulator_rpm"]:
        pytest.skip("the stack's emulator runs without a quota (MAI_STACK_EMULATOR_RPM=0)")
    assert extra["rpm"] == stack.state["emulator_rpm"]  # 60 unless MAI_STACK_EMULATOR_RPM says
    assert extra["rpm_redis_conn_id"] == config.PACING_REDIS_CONN  # one schedule for both workers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trigger", "no_such_dag"], "no DAG 'no_such_dag'"),
        (["trigger", "mai_product_batch", "{not json"], "CONF_JSON is not valid JSON"),
        (["trigger", "mai_product_batch", "[1, 2]"], "CONF_JSON must be a JSON object"),
    ],
)
def test_trigger_refuses_clearly(stack, args, message):
    result = stack_command(*args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.timeout(300)
def test_no_secret_in_any_log_file_of_the_stack(stack, api, output, stack_emulator):
    # A run through every secret: the API key in each request, the Redis password for pacing, and
    # a request the service refuses (an error path logs the most).
    stack_emulator(connection_extra={"rpm": 600, "rpm_redis_conn_id": config.PACING_REDIS_CONN})
    prompts = ["a quiet harbour at dawn", "a lighthouse in fog", "a scene with [violence]"]
    run = run_dag(api, "mai_stack_generate", {"prompts": prompts, "output_base": str(output)}, within=240)
    assert run["state"] == "failed"  # the content filter refused the third
    assert len(list(output.glob("*.png"))) == 2

    logs = [p for folder in (stack.logs, stack.home / "logs") for p in folder.rglob("*") if p.is_file()]
    task_logs = [p for p in logs if f"run_id={run['dag_run_id']}" in str(p)]
    assert len(task_logs) >= 3 and len(logs) > 10
    leaks = [
        f"{name} in {path}"
        for path in logs
        for name, secret in stack.secrets.items()
        if secret.encode() in path.read_bytes()
    ]
    assert leaks == []
