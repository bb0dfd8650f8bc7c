"""Quota utilisation: N worker processes share one deployment limited to R requests per minute.

Each worker process stands for an Airflow worker slot running MAI tasks back to back: every task
builds a fresh ``MaiHook`` from the connection (as a task does) and generates one image. The
emulator (in this process) enforces R RPM over a sliding minute and answers 429 with Retry-After;
its answers take a scaled-down latency (seconds, where the service takes ~40 s).

Only the steady state counts: the first minute (``--warmup``), where the sliding window is still
filling and any client gets a free burst, is run but not measured.

Run twice - pacing off (the hook learns the limit from 429s, honouring Retry-After) and pacing on
(connection extra ``rpm`` = R: a send-slot schedule shared by the workers) - and print, for each:
images per minute achieved (share of R), failed images, and the share of requests answered 429.
Targets: >= 95 % of R, 0 failed images, <= 5 % of requests answered 429.

    python bench/quota.py [--rpm 120 --workers 8 --seconds 60 --latency 1-3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

from _common import API_KEY, connection_json  # bench/ is on sys.path


def worker(conn: str, start_at: float, stop_at: float, worker_id: int, results) -> None:  # type: ignore[no-untyped-def]
    os.environ["AIRFLOW_CONN_MAI_DEFAULT"] = conn
    from airflow_provider_mai.exceptions import MaiError
    from airflow_provider_mai.hooks.mai import MaiHook

    MaiHook  # noqa: B018  (imported before the start line, like a warm worker)
    done: list[tuple[float, bool]] = []
    time.sleep(max(0.0, start_at - time.time()))
    task = 0
    while time.time() < stop_at:
        task += 1
        hook = MaiHook()  # one task = one hook, as in Airflow
        try:
            hook.generate_image(f"worker {worker_id} task {task}", width=768, height=768)
            done.append((time.time(), True))
        except MaiError:
            done.append((time.time(), False))
    results.put(done)


def run(
    rpm: int, workers: int, seconds: float, warmup: float, latency: tuple[float, float], pacing: bool
) -> dict:
    from airflow_provider_mai.emulator import MaiEmulator

    with MaiEmulator(api_key=API_KEY, rpm=rpm, latency=latency) as emulator:
        extra: dict[str, object] = {"max_retries": 8}
        if pacing:
            extra.update(rpm=rpm, rpm_state_dir=tempfile.mkdtemp(prefix="mai-pacing-"))
        conn = connection_json(emulator.url, **extra)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        start_at = time.time() + 8.0  # time for the workers to import Airflow
        measure_from = start_at + warmup
        stop_at = measure_from + seconds
        procs = [
            ctx.Process(target=worker, args=(conn, start_at, stop_at, i, results)) for i in range(workers)
        ]
        for p in procs:
            p.start()
        outcomes = [item for _ in procs for item in results.get(timeout=seconds + 600)]
        for p in procs:
            p.join(timeout=60)
        statuses = [r.status for r in emulator.requests]
    in_window = [ok for finished, ok in outcomes if measure_from < finished <= stop_at]
    images = sum(in_window)
    return {
        "images_per_minute": images / seconds * 60,
        "share_of_quota": images / seconds * 60 / rpm,
        "failed_images": sum(1 for _, ok in outcomes if not ok),
        "requests": len(statuses),
        "share_429": statuses.count(429) / max(1, len(statuses)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=120)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=60, help="unmeasured seconds first")
    parser.add_argument("--latency", default="1-3", help="seconds per answer, LOW-HIGH")
    args = parser.parse_args()
    low, _, high = args.latency.partition("-")
    latency = (float(low), float(high or low))

    print(
        f"R = {args.rpm} RPM, N = {args.workers} worker processes, "
        f"{args.seconds:.0f} s measured after {args.warmup:.0f} s, latency {args.latency} s"
    )
    for pacing in (False, True):
        r = run(args.rpm, args.workers, args.seconds, args.warmup, latency, pacing)
        print(
            f"pacing {'on ' if pacing else 'off'}: {r['images_per_minute']:6.1f} images/min "
            f"({r['share_of_quota']:.1%} of R), {r['failed_images']} failed images, "
            f"{r['requests']} requests, {r['share_429']:.1%} answered 429"
        )


if __name__ == "__main__":
    main()
