"""``scripts/stack.sh up | status | trigger | down``: the commands, and their argument parsing."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time

import stack as package

from .airflow import component_health, configure, start_airflow
from .config import ADMIN_USER, POOL, WORKERS, StackError, setting
from .processes import all_ended, listening_addresses, process_tree, pss_kib, session_members
from .rest import images_of_run
from .services import check_prerequisites, run_emulator, start_emulator, start_postgres, start_redis
from .state import Stack


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
    """Parse the command line and run the command; the exit status (2: a StackError, printed)."""
    parser = argparse.ArgumentParser(
        prog="scripts/stack.sh", description=(package.__doc__ or "").split("\n\n")[0]
    )
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
