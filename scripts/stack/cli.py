"""``scripts/stack.sh up | status | trigger | down``: the commands, and their argument parsing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any

import stack as package

from .airflow import component_health, configure, start_airflow
from .config import ADMIN_USER, POOL, WORKERS, StackError, setting
from .processes import listening_addresses, process_tree, pss_kib, wait_until
from .rest import AirflowApi, images_of_run
from .services import (
    check_prerequisites,
    run_emulator,
    start_emulator,
    start_postgres,
    start_redis,
)
from .state import Stack
from .user import dags_choice, read_connections, rest_connections


def up(dags_option: str | None, connection_options: list[str], connection_files: list[str]) -> int:
    """Start whatever is not running (with the user's DAG folder and connections); print where
    the UI is."""
    started = time.monotonic()
    within = float(setting("READY_WITHIN", "180"))
    # The user's input first: a mistake costs nothing yet.
    dags = dags_choice(dags_option, dict(os.environ))
    raw_connections = read_connections(connection_options, connection_files)
    check_prerequisites()
    ignored = sorted(k for k in os.environ if k.startswith("AIRFLOW") and k != "AIRFLOW__CORE__DAGS_FOLDER")
    if dags is not None and dags.source == "AIRFLOW__CORE__DAGS_FOLDER":
        print(f"AIRFLOW__CORE__DAGS_FOLDER: running your DAGs from {dags.folder} (as --dags does)")
    if ignored:
        print(f"Not passed to the stack's Airflow, which sets its own configuration: {', '.join(ignored)}")
    stack = Stack()
    stack.prepare()
    connections = rest_connections(raw_connections, stack.home)
    start_postgres(stack, within)
    start_redis(stack, within)
    start_emulator(stack, within)
    start_airflow(stack, within, dags)
    notes = configure(stack, within, connections)
    print(f"Stack up in {time.monotonic() - started:.1f} s (state in {stack.folder})")
    passwords = stack.folder / "passwords.json"
    rpm = stack.state.get("emulator_rpm")
    quota = f"quota {rpm} RPM, mai_default paced to it" if rpm else "no quota"
    print(f"  Airflow UI   {stack.api_url}  (user {ADMIN_USER}, password in {passwords})")
    print(f"  MAI emulator {stack.emulator_url}  (connection mai_default, {quota}; pool {POOL})")
    print(f"  images       {stack.output}")
    print(f"  logs         {stack.logs}  and  {stack.home / 'logs'}")
    for note in notes:
        print(f"  {note}")
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
    """Run a DAG through the REST API, wait for it - and for any run the unpause started - and print
    where each image landed and who made it (or that it was reused)."""
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
    dag = api.get_or_none(f"/api/v2/dags/{dag_id}")
    if dag is None:
        raise StackError(f"no DAG {dag_id!r} (is it parsed? read {stack.log_file('dag-processor')})")
    before = run_ids(api, dag_id)
    # A paused DAG whose schedule is due gets a scheduled run of its own once unpaused.
    due = dag["next_dagrun_run_after"]
    schedule_due = dag["is_paused"] and due is not None and instant(due) <= datetime.now(timezone.utc)
    started = time.monotonic()
    run_id = api.trigger(dag_id, conf)["dag_run_id"]
    print(f"Triggered {dag_id}, run {run_id}; waiting (up to {within:.0f} s) ...", flush=True)
    if dag["is_paused"]:
        print(f"  {dag_id} was paused: it is unpaused now (its schedule, if any, runs from now on)")
    ok = report_run(api, dag_id, api.wait_for_run(dag_id, run_id, within), started)
    # Runs the unpause caused: the scheduler's, which may appear a moment after the unpause.
    caused: set[str] = set()

    def scheduled() -> str | None:
        caused.update(
            r["dag_run_id"]
            for r in api.pages(f"/api/v2/dags/{dag_id}/dagRuns", "dag_runs")
            if r["dag_run_id"] not in before and r["dag_run_id"] != run_id and r["run_type"] != "manual"
        )
        return None if caused or not schedule_due else "the scheduled run has not appeared yet"

    if dag["is_paused"]:
        wait_until(scheduled, 60, 1.0)
    for other in sorted(caused):
        print(f"The unpause also started run {other} (the schedule was due); waiting ...", flush=True)
        ok = report_run(api, dag_id, api.wait_for_run(dag_id, other, within), started) and ok
    if not ok:
        print(f"Task logs: {stack.home / 'logs' / f'dag_id={dag_id}'}", file=sys.stderr)
    return 0 if ok else 1


def run_ids(api: AirflowApi, dag_id: str) -> set[str]:
    """Ids of every run of the DAG."""
    return {r["dag_run_id"] for r in api.pages(f"/api/v2/dags/{dag_id}/dagRuns", "dag_runs")}


def instant(text: str) -> datetime:
    """A timestamp of the REST API."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def report_run(api: AirflowApi, dag_id: str, run: dict[str, Any], started: float) -> bool:
    """Print each image of the run - the worker and try that made it, or ``reused`` when an image
    already there was kept (no request) - and a summary; whether the run succeeded."""
    run_id = run["dag_run_id"]
    by_worker: dict[str, int] = {}
    reused = 0
    for ti, result in images_of_run(api, dag_id, run_id):
        index = f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""
        if result.get("reused"):
            print(f"  {ti['task_id'] + index:16} {'reused':16} {'0 requests':10}  {result['uri']}")
            reused += 1
            continue
        print(f"  {ti['task_id'] + index:16} {ti['hostname']:16} try {ti['try_number']}  {result['uri']}")
        by_worker[ti["hostname"]] = by_worker.get(ti["hostname"], 0) + 1
    made = [f"{count} by {host}" for host, count in sorted(by_worker.items())]
    made += [f"{reused} reused (no request)"] if reused else []
    summary = ", ".join(made) or "no images"
    print(f"Run {run_id} {run['state']} in {time.monotonic() - started:.1f} s: {summary}.")
    return bool(run["state"] == "success")


def down(purge: bool, stack: Stack | None = None) -> int:
    """Stop every process we started, by PID: Airflow first (in parallel), then the services."""
    started = time.monotonic()
    stack = stack or Stack()
    for group in (Stack.AIRFLOW, ("emulator", "redis"), ("postgres",)):
        stack.stop(group)
    stack.state["processes"] = {}
    stack.state.pop("dags_folder", None)  # `up` options last until `down`
    if stack.state_file.exists():
        stack.save()
    print(f"Stack down in {time.monotonic() - started:.1f} s.")
    if purge and stack.folder.exists():
        shutil.rmtree(stack.folder)
        print(f"Removed {stack.folder}.")
    return 0


def restart(names: list[str], within: float) -> int:
    """Stop these Airflow components by PID (if they run) and start them again as ``up`` does;
    wait until each is healthy (for a triggerer: heartbeating, so it takes over the triggers of the
    one it replaces once that one's heartbeat is 30 s old)."""
    started = time.monotonic()
    stack = Stack()
    if not stack.state.get("processes"):
        raise StackError("the stack is not up: bash scripts/stack.sh up")
    stack.stop([name for name in names if stack.running(name)])
    start_airflow(stack, within)
    pids = ", ".join(f"{name} {stack.processes[name].pid}" for name in names)
    print(f"Restarted {pids} in {time.monotonic() - started:.1f} s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; the exit status (2: a StackError, printed)."""
    parser = argparse.ArgumentParser(
        prog="scripts/stack.sh", description=(package.__doc__ or "").split("\n\n")[0]
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{up,status,trigger,restart,down}"
    )
    up_parser = commands.add_parser(
        "up",
        help="start the stack (only what is not running)",
        description="Start the stack (only what is not running), with your DAGs and connections if given. "
        "Options last until `down`; `up` with another --dags restarts the Airflow components.",
    )
    up_parser.add_argument(
        "--dags",
        metavar="DIR",
        help="your DAG folder, run beside the examples (bundle user-dags); '' for none. "
        "Default: $MAI_STACK_DAGS_FOLDER, else $AIRFLOW__CORE__DAGS_FOLDER, else what the stack runs",
    )
    up_parser.add_argument(
        "--connection",
        action="append",
        default=[],
        metavar="ID=URI",
        help="a connection to create or replace, as an AIRFLOW_CONN_ URI (repeatable). Command lines "
        "are visible to other users: for passwords prefer --connections-file",
    )
    up_parser.add_argument(
        "--connections-file",
        action="append",
        default=[],
        metavar="FILE",
        help='connections as JSON: {"ID": "URI"} or {"ID": {"conn_type": ..., "host": ..., "login": ..., '
        '"password": ..., "schema": ..., "port": ..., "extra": {...}}} (repeatable)',
    )
    status_parser = commands.add_parser("status", help="PID, health, ports and memory of each component")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    trigger_parser = commands.add_parser("trigger", help="run a DAG and print where its images landed")
    trigger_parser.add_argument("dag_id")
    trigger_parser.add_argument("conf", nargs="?", help="the run's conf, a JSON object")
    trigger_parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait (1800)")
    restart_parser = commands.add_parser(
        "restart",
        help="stop Airflow components by PID and start them again",
        description="Stop these Airflow components (by the PIDs the stack started; SIGKILL after 20 s) "
        "and start them again as `up` does, then wait until each is healthy. Also starts one that "
        "died or was killed.",
    )
    restart_parser.add_argument("components", nargs="+", choices=Stack.AIRFLOW, metavar="COMPONENT")
    down_parser = commands.add_parser("down", help="stop every process of the stack")
    down_parser.add_argument("--purge", action="store_true", help="also delete the state folder")
    commands.add_parser("emulator", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args.dags, args.connection, args.connections_file)
        if args.command == "status":
            return status(args.json)
        if args.command == "trigger":
            return trigger(args.dag_id, args.conf, args.timeout)
        if args.command == "restart":
            return restart(args.components, float(setting("READY_WITHIN", "180")))
        if args.command == "down":
            return down(args.purge)
        return run_emulator()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        started = Stack()
        if args.command == "up" and any(started.running(name) for name in started.processes):
            print("What did start is still running: bash scripts/stack.sh status | down", file=sys.stderr)
        return 2
