"""A burst of task starts on the production-shaped stack: N tasks released at once, how many fail.

When many tasks start together on a small machine, each task's supervisor calls the api-server's
execution API to mark its try running while the api-server, the scheduler and N freshly forked
task processes compete for the CPU. Under Airflow's default ``[workers] execution_api_timeout``
(5 s) that call can time out; the client retries it, the retry finds the try already running (the
first call did land) and the try fails before it ran. ``scripts/stack/airflow.py`` sets the
timeouts the stack uses (``BURST_TOLERANCE``); this benchmark shows what they buy.

It needs the stack up with at least N worker slots, e.g. N = 32 on the two workers::

    MAI_STACK_WORKER_CONCURRENCY=16 bash scripts/stack.sh up
    python bench/stack_burst.py [--tasks 32 --latency 20]

It points the stack tests' connection ``mai_stack`` at an emulator in this process (every answer
after ``--latency`` seconds, so all N are in flight together), sizes the pool ``mai_stack`` to N,
runs ``mai_stack_generate`` with N prompts and reads the task instances and their tries:

- tries that failed (and why, from their logs: execution API timeouts, "already running");
- tasks that failed for good (the DAG retries a failed try twice);
- the most tries running at once, and how long the N first tries took to start;
- the run's wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from stack import airflow as stack_airflow  # noqa: E402  (scripts/stack/)
from stack import processes, rest, state  # noqa: E402

DAG_ID = "mai_stack_generate"
#: What a failed try's log says, checked in this order (the first match names the cause).
CAUSES = {
    "execution API timeout": ("ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout"),
    "already running": ("already running",),
    "heartbeat": ("heartbeat",),
}


def instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def worker_slots(stack: state.Stack) -> int:
    """Celery pool slots of the stack's workers together (from a ``stats`` broadcast)."""
    from celery import Celery

    app = Celery(broker=f"{stack.redis_url}/0")
    try:
        stats = app.control.inspect(timeout=2.0).stats() or {}
    finally:
        app.close()
    return sum(int(node["pool"]["max-concurrency"]) for node in stats.values())


def cause(stack: state.Stack, run_id: str, map_index: int, try_number: int) -> str:
    """Why a try failed, read from its task log."""
    log = (
        stack.home
        / "logs"
        / f"dag_id={DAG_ID}"
        / f"run_id={run_id}"
        / "task_id=generate"
        / f"map_index={map_index}"
        / f"attempt={try_number}.log"
    )
    text = log.read_text(errors="replace") if log.exists() else ""
    for name, needles in CAUSES.items():
        if any(needle in text for needle in needles):
            return name
    return "other" if text else "no log"


def burst(stack: state.Stack, api: rest.AirflowApi, tasks: int, latency: float) -> dict[str, Any]:
    from airflow_provider_mai.emulator import MaiEmulator

    tag = uuid.uuid4().hex[:6]
    prompts = [f"Burst {tag}: a porcelain teacup, pattern {i}" for i in range(tasks)]
    output = stack.output / "bench" / f"burst-{tag}"
    with MaiEmulator(api_key=stack.secrets["api_key"], latency=latency) as emulator:
        api.put_connection(stack_airflow.mai_connection(stack, "mai_stack", emulator.url))
        # Held back by a pool of no slots until every task waits for one, then released together.
        api.put_pool("mai_stack", 0, "stack burst benchmark")
        dag_run = api.trigger(DAG_ID, {"prompts": prompts, "output_base": str(output)})
        run_id = dag_run["dag_run_id"]

        def all_waiting() -> str | None:
            states = Counter(
                ti["state"] for ti in api.task_instances(DAG_ID, run_id) if ti["task_id"] == "generate"
            )
            return None if states.get("scheduled") == tasks else f"not all scheduled yet: {dict(states)}"

        reason = processes.wait_until(all_waiting, 300, 1.0)
        if reason:
            raise SystemExit(reason)
        api.put_pool("mai_stack", tasks, "stack burst benchmark")
        dag_run = api.wait_for_run(DAG_ID, run_id, within=1800, interval=2.0)
        requests = len(emulator.requests)
    tis = [ti for ti in api.task_instances(DAG_ID, run_id) if ti["task_id"] == "generate"]
    tries = []
    for ti in tis:
        path = (
            f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/generate/"
            f"{ti['map_index']}/tries"
        )
        tries += api.get(path)["task_instances"] if ti["try_number"] > 1 else [ti]
    failed = [t for t in tries if t["state"] in ("failed", "up_for_retry")]
    first = [t for t in tries if t["try_number"] == 1 and t["start_date"]]
    spans = sorted((instant(t["start_date"]), instant(t["end_date"] or t["start_date"])) for t in tries)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    starts = [instant(t["start_date"]) for t in first]
    return {
        "tasks": len(tis),
        "failed_tries": len(failed),
        "causes": Counter(cause(stack, run_id, t["map_index"], t["try_number"]) for t in failed),
        "failed_tasks": sum(1 for ti in tis if ti["state"] != "success"),
        "peak_running": peak,
        "first_starts_within_s": max(starts) - min(starts) if starts else float("nan"),
        "wall_s": instant(dag_run["end_date"]) - instant(dag_run["start_date"]),
        "requests": requests,
        "state": dag_run["state"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=32, help="N: tasks released at once (32)")
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per emulator answer (20)")
    parser.add_argument("--rounds", type=int, default=1, help="bursts, one after the other (1)")
    args = parser.parse_args()

    stack = state.Stack()
    if stack.running("api-server") is None:
        raise SystemExit("the stack is not up: bash scripts/stack.sh up")
    slots = worker_slots(stack)
    if slots < args.tasks:
        raise SystemExit(
            f"the stack's workers have {slots} slots for {args.tasks} tasks: "
            f"bash scripts/stack.sh down; MAI_STACK_WORKER_CONCURRENCY={-(-args.tasks // 2)} "
            "bash scripts/stack.sh up"
        )
    api = stack.api()
    print(f"N = {args.tasks} tasks at once, {slots} worker slots, emulator latency {args.latency:.0f} s")
    print(
        f"{'round':>5} {'failed tries':>12} {'failed tasks':>12} {'peak running':>12} "
        f"{'1st tries started in':>20} {'wall s':>7}  causes"
    )
    for number in range(1, args.rounds + 1):
        started = time.monotonic()
        r = burst(stack, api, args.tasks, args.latency)
        causes = ", ".join(f"{count} {name}" for name, count in r["causes"].most_common()) or "-"
        print(
            f"{number:5d} {r['failed_tries']:12d} {r['failed_tasks']:12d} {r['peak_running']:12d} "
            f"{r['first_starts_within_s']:19.1f}s {r['wall_s']:7.1f}  {causes}"
            f"   (run {r['state']}, {r['requests']} requests, {time.monotonic() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
