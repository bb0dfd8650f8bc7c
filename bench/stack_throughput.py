"""Throughput on the production-shaped stack: N images through two Celery workers vs a quota of R RPM.

Needs the stack up (``bash scripts/stack.sh up``). For each pacing setting it points the stack
tests' connection ``mai_stack`` at an emulator in this process - limited to R requests per minute
per deployment over a sliding minute (429 with Retry-After beyond), answering after a scaled-down
latency - sizes the pool ``mai_stack``, runs the DAG ``mai_stack_generate`` with N prompts (one
generation task each) and reads the emulator's request log and the task instances:

- share of R achieved in the steady state: requests admitted (answered 200) per minute, over the
  whole minutes from one minute after the first request (past the sliding window's free burst)
  until the last request (so N must exceed 2 R for a measured minute);
- images failed (task instances that finally failed);
- share of requests answered 429;
- wall time of the run vs the floor N / R minutes;
- worker slot-seconds per image: the time task instances held a worker slot (all tries: start to
  end, including waits for a send slot or a retry), divided by the images made.

Pacing settings (the two workers have separate temp folders, like two hosts):

- ``off``: no ``rpm``; the hook learns the quota from 429s (Retry-After, backoff);
- ``file``: ``rpm`` = R, default ``rpm_state_dir``: one file schedule per worker (per "host");
- ``shared``: ``rpm`` = R and one ``rpm_state_dir`` for both (a shared volume);
- ``redis``: ``rpm`` = R and ``rpm_redis_conn_id``: the schedule in the stack's Redis.

Targets (pacing on): >= 95 % of R, 0 failed, <= 5 % answered 429.

    python bench/stack_throughput.py [--images 120 --rpm 30 --latency 2-6 --pool 8 --settings off,file,redis]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _common import latency_range, running_stack  # noqa: E402  (bench/)
from stack import airflow as stack_airflow  # noqa: E402  (scripts/stack/)
from stack import config, rest, state  # noqa: E402  (scripts/stack/)

SETTINGS = ("off", "file", "shared", "redis")
DAG_ID = "mai_stack_generate"


def instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def connection_extra(setting: str, rpm: int, stack: state.Stack) -> dict[str, Any]:
    if setting == "off":
        return {}
    if setting == "file":
        return {"rpm": rpm}
    if setting == "shared":
        return {"rpm": rpm, "rpm_state_dir": str(stack.folder / "pacing-bench" / uuid.uuid4().hex[:8])}
    return {"rpm": rpm, "rpm_redis_conn_id": config.PACING_REDIS_CONN}


def slot_seconds(api: rest.AirflowApi, run_id: str, ti: dict[str, Any]) -> float:
    """Seconds the task instance held a worker slot, over all its tries."""
    if ti["try_number"] <= 1:
        return float(ti["duration"] or 0.0)
    run = urllib.parse.quote(run_id)
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/generate/{ti['map_index']}/tries"
    return sum(float(t["duration"] or 0.0) for t in api.get(path)["task_instances"])


def run(
    stack: state.Stack,
    api: rest.AirflowApi,
    setting: str,
    images: int,
    rpm: int,
    latency: tuple[float, float],
    pool: int,
) -> dict[str, Any]:
    from airflow_provider_mai.emulator import MaiEmulator

    tag = uuid.uuid4().hex[:6]
    prompts = [f"Bench {tag}: a glass paperweight with a spiral of colour number {i}" for i in range(images)]
    output = stack.output / "bench" / f"{setting}-{tag}"
    with MaiEmulator(api_key=stack.secrets["api_key"], rpm=rpm, latency=latency) as emulator:
        extra = connection_extra(setting, rpm, stack)
        api.put_connection(stack_airflow.mai_connection(stack, "mai_stack", emulator.url, **extra))
        api.put_pool("mai_stack", pool, "stack benchmark")
        started = time.time()
        dag_run = api.trigger(DAG_ID, {"prompts": prompts, "output_base": str(output)})
        dag_run = api.wait_for_run(DAG_ID, dag_run["dag_run_id"], within=3600, interval=2.0)
        requests = list(emulator.requests)
    run_id = dag_run["dag_run_id"]
    tis = [ti for ti in api.task_instances(DAG_ID, run_id) if ti["task_id"] == "generate"]
    made = sum(1 for ti in tis if ti["state"] == "success")
    # The steady state: whole minutes from one minute after the first request (the sliding
    # window's free burst) until the last request - any 60 s then holds at most R admitted.
    admitted = sorted(r.received for r in requests if r.status == 200)
    begin = admitted[0] + 60.0 if admitted else 0.0
    minutes = int((admitted[-1] - begin) // 60) if admitted else 0
    in_window = [t for t in admitted if begin <= t < begin + 60 * minutes]
    per_minute = len(in_window) / minutes if minutes else float("nan")
    wall = instant(dag_run["end_date"]) - instant(dag_run["start_date"])
    return {
        "setting": setting,
        "images_per_minute": per_minute,
        "share_of_rpm": per_minute / rpm,
        "failed": sum(1 for ti in tis if ti["state"] == "failed"),
        "requests": len(requests),
        "share_429": sum(1 for r in requests if r.status == 429) / max(1, len(requests)),
        "wall_s": wall,
        "floor_s": images / rpm * 60,
        "slot_seconds_per_image": sum(slot_seconds(api, run_id, ti) for ti in tis) / max(1, made),
        "workers": sorted({ti["hostname"] for ti in tis if ti["hostname"]}),
        "measured_minutes": minutes,
        "measured_in_s": time.time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=120, help="N: images per run (120)")
    parser.add_argument("--rpm", type=int, default=30, help="R: the emulated quota, requests per minute (30)")
    parser.add_argument(
        "--latency", default="2-6", help="seconds per answer, LOW-HIGH (2-6: the service's ~40 s / 10)"
    )
    parser.add_argument(
        "--pool", type=int, default=8, help="slots of the pool mai_stack (8 = both workers' slots)"
    )
    parser.add_argument(
        "--settings", default="off,file,shared,redis", help="comma-separated: " + ",".join(SETTINGS)
    )
    args = parser.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings: {', '.join(unknown)}")
    latency = latency_range(args.latency)
    stack, api = running_stack()
    print(
        f"R = {args.rpm} RPM, N = {args.images} images, latency {args.latency} s, pool {args.pool}, "
        f"2 Celery workers x {config.setting('WORKER_CONCURRENCY', '4')} slots",
        flush=True,
    )
    print(
        f"{'pacing':8} {'images/min':>10} {'of R':>6} {'failed':>6} {'requests':>8} {'429':>6} "
        f"{'wall s':>7} {'floor s':>7} {'slot-s/img':>10}",
        flush=True,
    )
    for setting in settings:
        r = run(stack, api, setting, args.images, args.rpm, latency, args.pool)
        print(
            f"{setting:8} {r['images_per_minute']:10.1f} {r['share_of_rpm']:6.1%} {r['failed']:6d} "
            f"{r['requests']:8d} {r['share_429']:6.1%} {r['wall_s']:7.0f} {r['floor_s']:7.0f} "
            f"{r['slot_seconds_per_image']:10.1f}   ({r['measured_minutes']} min measured)",
            flush=True,
        )


if __name__ == "__main__":
    main()
