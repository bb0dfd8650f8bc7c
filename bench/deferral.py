"""Deferrable vs synchronous on the production-shaped stack: N generations at a quota of R RPM.

Needs the stack up (``bash scripts/stack.sh up``). For each mode it points the stack tests'
connection ``mai_stack`` at an emulator in this process (R requests a minute over a sliding minute,
429 beyond; every answer after ``--latency`` seconds, the service's 20-40 s), paced to R through the
stack's Redis (``rpm``, ``rpm_redis_conn_id``), sizes the pool ``mai_stack`` to N (deferred tasks
counted: ``include_deferred``), and runs N generations (``mai_stack_chain`` or
``mai_stack_chain_deferred`` with ``edit`` false, tests/stack/dags/mai_stack_chain.py):

- ``sync``: each request holds a worker slot; the workers are restarted with ``--sync-slots``
  slots in all (default 32: what this 2-core machine takes; filling R would need R x latency / 60);
- ``deferred``: the worker defers at once and the triggerer holds the requests; the workers run
  with ``--deferred-slots`` (default 8: the stack's 4 each), which only start and resume tasks.

Figures, per mode:

- peak PSS of the workers and the triggerer together (every process of their trees, sampled each
  second), and its rise over the idle stack just before the run;
- the triggerer's peak PSS and RSS (its whole tree) while the answers arrive together;
- CPU-seconds per image: user + system time of the workers and the triggerer (and of every Airflow
  component) over the run, children included, divided by the images made;
- the share of R sustained over the steady state: requests admitted (answered 200) per minute over
  the middle 80 % of them (ramp-up and tail left out), divided by R;
- the most requests in flight at the emulator, failed images, the share of requests answered 429,
  wall time.

A triggerer pays once for what its first triggers import and allocate (httpx, the client, the object
store, thread stacks for file writes): ``--warmup K`` (default 8) first runs K deferred generations
at a short latency and prints the triggerer's PSS before and after, so that the measured runs'
idle baseline is a triggerer that has run a trigger (the cost per request in flight), and the
first-use cost is a figure of its own. ``--warmup 0`` measures over a cold triggerer.

    python bench/deferral.py [--n 120 --rpm 180 --latency 25-35 --sync-slots 32 --deferred-slots 8
                              --warmup 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _common import latency_range, running_stack  # noqa: E402  (bench/)
from stack import airflow as stack_airflow  # noqa: E402  (scripts/stack/)
from stack import config, processes, rest, state  # noqa: E402
from stack_burst import instant, worker_slots  # noqa: E402  (bench/)

MODES = {"sync": "mai_stack_chain", "deferred": "mai_stack_chain_deferred"}
#: Worker slots of the stack (``MAI_STACK_WORKER_CONCURRENCY`` per worker; the deferred mode's).
STACK_SLOTS_PER_WORKER = 4
MEASURED = ("triggerer", *config.WORKERS)


def trees(stack: state.Stack, names: tuple[str, ...]) -> dict[str, list[processes.Process]]:
    """Every process of each component's tree (and session: children that outlived a parent)."""
    found = {}
    for name in names:
        root = stack.running(name)
        if root is not None:
            found[name] = list(
                {
                    p.pid: p for p in [*processes.process_tree(root.pid), *processes.session_members(root)]
                }.values()
            )
    return found


def cpu_ticks(stack: state.Stack, names: tuple[str, ...]) -> dict[tuple[str, int, int], int]:
    """User + system clock ticks of each process of these components, its reaped children's
    included (``utime stime cutime cstime``), keyed by (component, PID, start time)."""
    ticks = {}
    for name, members in trees(stack, names).items():
        for p in members:
            try:
                text = Path(f"/proc/{p.pid}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[19]) == p.started:
                ticks[(name, p.pid, p.started)] = sum(int(f) for f in fields[11:15])
    return ticks


def cpu_seconds(before: dict, after: dict, names: tuple[str, ...]) -> float:
    """CPU time spent between two ``cpu_ticks`` snapshots by these components. A process alive at
    the end counts its own time and that of every child it reaped meanwhile; one that ended was
    reaped by a process of the tree, so it is in its parent's figure (nothing counted twice)."""
    ticks = sum(t - before.get(k, 0) for k, t in after.items() if k[0] in names)
    return ticks / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Each second: PSS of workers + triggerer, and the triggerer's PSS and RSS; the peaks."""

    def __init__(self, stack: state.Stack) -> None:
        self.stack = stack
        self.peak_measured = self.peak_triggerer_pss = self.peak_triggerer_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int]:
        found = trees(self.stack, MEASURED)
        triggerer = [p.pid for p in found.get("triggerer", [])]
        everyone = [p.pid for members in found.values() for p in members]
        return (
            processes.pss_kib(everyone),
            processes.pss_kib(triggerer),
            processes.rollup_kib(triggerer, "Rss"),
        )

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            measured, pss, rss = self.sample()
            self.peak_measured = max(self.peak_measured, measured)
            self.peak_triggerer_pss = max(self.peak_triggerer_pss, pss)
            self.peak_triggerer_rss = max(self.peak_triggerer_rss, rss)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def set_worker_slots(stack: state.Stack, slots: int) -> None:
    """Restart both workers with ``slots`` in all (``scripts/stack.sh restart``), unless they have them."""
    if worker_slots(stack) == slots:
        return
    per_worker = -(-slots // len(config.WORKERS))
    print(f"  (restarting the workers with {per_worker} slots each ...)", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["MAI_STACK_WORKER_CONCURRENCY"] = str(per_worker)
    env["PYTHONPATH"] = str(ROOT / "scripts")
    subprocess.run(
        [sys.executable, "-m", "stack", "restart", *config.WORKERS], env=env, check=True, timeout=300
    )


def most_in_flight(requests: list[Any]) -> int:
    """The most requests the emulator held at one moment (arrival to answer)."""
    events = sorted(
        [(r.received, 1) for r in requests] + [(r.answered or r.received, -1) for r in requests],
        key=lambda e: (e[0], e[1]),
    )
    held = most = 0
    for _, step in events:
        held += step
        most = max(most, held)
    return most


def run(
    stack: state.Stack, api: rest.AirflowApi, mode: str, n: int, rpm: int, latency: tuple[float, float]
) -> dict[str, Any]:
    from airflow_provider_mai.emulator import MaiEmulator

    dag_id = MODES[mode]
    tag = uuid.uuid4().hex[:6]
    prompts = [f"Deferral bench {tag}: a paper lantern, pattern {i}" for i in range(n)]
    output = stack.output / "bench" / f"deferral-{mode}-{tag}"
    with MaiEmulator(api_key=stack.secrets["api_key"], rpm=rpm, latency=latency) as emulator:
        extra = {"rpm": rpm, "rpm_redis_conn_id": config.PACING_REDIS_CONN}
        api.put_connection(stack_airflow.mai_connection(stack, "mai_stack", emulator.url, **extra))
        api.put_pool("mai_stack", n, "deferral benchmark", include_deferred=True)
        sampler = Sampler(stack)
        idle_measured, idle_triggerer, _ = sampler.sample()
        everything = (*stack_airflow.JOB_TYPES, "api-server", *config.WORKERS)
        before = cpu_ticks(stack, everything)
        with sampler:
            dag_run = api.trigger(dag_id, {"prompts": prompts, "output_base": str(output), "edit": False})
            dag_run = api.wait_for_run(dag_id, dag_run["dag_run_id"], within=3600, interval=2.0)
        after = cpu_ticks(stack, everything)
        requests = list(emulator.requests)
    tis = [ti for ti in api.task_instances(dag_id, dag_run["dag_run_id"]) if ti["task_id"] == "generate"]
    made = sum(1 for ti in tis if ti["state"] == "success")
    admitted = sorted(r.received for r in requests if r.status == 200)
    middle = admitted[len(admitted) // 10 : len(admitted) - len(admitted) // 10]
    span = middle[-1] - middle[0] if len(middle) > 1 else 0.0
    per_minute = (len(middle) - 1) / span * 60 if span else float("nan")
    return {
        "mode": mode,
        "slots": worker_slots(stack),
        "peak_mib": sampler.peak_measured / 1024,
        "rise_mib": (sampler.peak_measured - idle_measured) / 1024,
        "triggerer_peak_pss_mib": sampler.peak_triggerer_pss / 1024,
        "triggerer_rise_mib": (sampler.peak_triggerer_pss - idle_triggerer) / 1024,
        "triggerer_peak_rss_mib": sampler.peak_triggerer_rss / 1024,
        "cpu_per_image": cpu_seconds(before, after, MEASURED) / max(1, made),
        "cpu_all_per_image": cpu_seconds(before, after, everything) / max(1, made),
        "share_of_rpm": per_minute / rpm,
        "in_flight": most_in_flight(requests),
        "failed": sum(1 for ti in tis if ti["state"] != "success"),
        "requests": len(requests),
        "share_429": sum(1 for r in requests if r.status == 429) / max(1, len(requests)),
        "wall_s": instant(dag_run["end_date"]) - instant(dag_run["start_date"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=120, help="N: generations per mode (120)")
    parser.add_argument(
        "--rpm", type=int, default=180, help="R: the emulated quota, requests per minute (180)"
    )
    parser.add_argument("--latency", default="25-35", help="seconds per answer, LOW-HIGH (25-35)")
    parser.add_argument("--sync-slots", type=int, default=32, help="worker slots in all for sync (32)")
    parser.add_argument(
        "--deferred-slots", type=int, default=8, help="worker slots in all for deferred (8: the stack's)"
    )
    parser.add_argument("--modes", default="sync,deferred", help="comma-separated: " + ",".join(MODES))
    parser.add_argument(
        "--warmup", type=int, default=8, help="deferred generations before measuring (8; 0: cold)"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"unknown modes: {', '.join(unknown)}")
    latency = latency_range(args.latency)
    stack, api = running_stack()
    print(
        f"R = {args.rpm} RPM, N = {args.n} generations, latency {args.latency} s, paced (Redis)", flush=True
    )
    rows = []
    try:
        if args.warmup and "deferred" in modes:
            set_worker_slots(stack, args.deferred_slots)
            stack = state.Stack()
            cold = Sampler(stack).sample()[1]
            warm = run(stack, api, "deferred", args.warmup, args.rpm, (0.5, 1.0))
            warmed = Sampler(stack).sample()[1]
            print(
                f"  warm-up: {args.warmup} deferred generations ({warm['failed']} failed); triggerer PSS "
                f"{cold / 1024:.0f} -> {warmed / 1024:.0f} MiB "
                f"(+{(warmed - cold) / 1024:.0f} MiB: first use)",
                flush=True,
            )
        for mode in modes:
            slots = args.sync_slots if mode == "sync" else args.deferred_slots
            set_worker_slots(stack, slots)
            stack = state.Stack()  # the restarted workers' PIDs
            rows.append(run(stack, api, mode, args.n, args.rpm, latency))
            r = rows[-1]
            print(
                f"  {mode}: done in {r['wall_s']:.0f} s, {r['failed']} failed, "
                f"{r['in_flight']} in flight at most",
                flush=True,
            )
    finally:
        set_worker_slots(state.Stack(), STACK_SLOTS_PER_WORKER * len(config.WORKERS))
    print(
        f"{'mode':9} {'slots':>5} {'peak MiB':>9} {'rise':>7} {'trig PSS':>9} {'rise':>6} {'trig RSS':>9} "
        f"{'CPU-s/img':>9} {'all':>6} {'of R':>6} {'flight':>6} {'failed':>6} {'429':>6} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r['mode']:9} {r['slots']:5d} {r['peak_mib']:9.0f} {r['rise_mib']:7.0f} "
            f"{r['triggerer_peak_pss_mib']:9.0f} {r['triggerer_rise_mib']:6.0f} "
            f"{r['triggerer_peak_rss_mib']:9.0f} {r['cpu_per_image']:9.2f} {r['cpu_all_per_image']:6.2f} "
            f"{r['share_of_rpm']:6.1%} {r['in_flight']:6d} "
            f"{r['failed']:6d} {r['share_429']:6.1%} {r['wall_s']:7.0f}"
        )
    print(
        "peak/rise: PSS of workers + triggerer, and its rise over the idle stack; trig: the triggerer's "
        "tree; CPU-s/img: workers + triggerer (all: every Airflow component); of R: admitted per minute "
        "over the middle 80 %; flight: most requests at the emulator at once"
    )


if __name__ == "__main__":
    main()
