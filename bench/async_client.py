"""N generations in flight at once from one process: the asyncio client against threads of sync ones.

What a triggerer pays to hold many slow requests. Each mode runs in a fresh process against the
same emulator (its own process, ``--latency`` seconds per answer, 1024x1024 PNGs):

- ``async shared``: one :class:`AsyncMaiClient`, N ``send`` calls gathered on one event loop;
- ``async per call``: N clients, one per call (what ``MaiImageTrigger`` does: one per trigger);
- ``sync threads``: N threads, a :class:`MaiClient` each (the trigger's former path:
  the sync client in ``asyncio.to_thread``).

Printed per mode: images, failures, wall time, RSS before the batch and its peak while the answers
arrive (sampled every 20 ms from /proc), CPU-seconds of the process for the batch and per image.

    python bench/async_client.py [--calls 120 --latency 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import API_KEY, emulator_process  # bench/ is on sys.path

MODES = ("async shared", "async per call", "sync threads")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_mode(mode: str, url: str, calls: int, timeout: float) -> dict[str, float]:
    """One mode in this process: warm up (imports, TLS-free pools), then N at once."""
    from airflow_provider_mai.client import MaiClient
    from airflow_provider_mai.client.async_core import AsyncMaiClient
    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import GenerateRequest

    settings = MaiSettings.from_connection(
        "bench", host=url, password=API_KEY, extra={"timeout": timeout, "max_retries": 0}
    )
    requests = [
        GenerateRequest(f"a lighthouse, take {i}", 1024, 1024, deployment="mai-image-2") for i in range(calls)
    ]

    async def one_async(client: AsyncMaiClient | None, request: GenerateRequest) -> int:
        if client is not None:
            return len((await client.send(request)).png)
        async with AsyncMaiClient(settings) as own:
            return len((await own.send(request)).png)

    async def batch_async(shared: bool) -> list[object]:
        if not shared:
            return await asyncio.gather(*(one_async(None, r) for r in requests), return_exceptions=True)
        async with AsyncMaiClient(settings) as client:
            return await asyncio.gather(*(one_async(client, r) for r in requests), return_exceptions=True)

    def batch_threads() -> list[object]:
        results: list[object] = [None] * calls

        def one(i: int) -> None:
            client = MaiClient(settings)
            try:
                results[i] = len(client.send(requests[i]).png)
            except Exception as exc:  # counted, not raised
                results[i] = exc
            finally:
                client.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 60)
        return results

    # Warm up: imports, the first connection, the rendered image in the emulator's cache.
    if mode == "sync threads":
        MaiClient(settings).send(requests[0])
    else:
        asyncio.run(one_async(None, requests[0]))
    before = _rss_mib()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu, started = _cpu_seconds(), time.monotonic()
    if mode == "sync threads":
        results = batch_threads()
    else:
        results = asyncio.run(batch_async(shared=mode == "async shared"))
    wall, cpu = time.monotonic() - started, _cpu_seconds() - cpu
    done.set()
    sampler.join()
    images = sum(isinstance(r, int) for r in results)
    return {
        "images": images,
        "failed": calls - images,
        "wall_s": wall,
        "rss_before_mib": before,
        "rss_peak_mib": max(peak, _rss_mib()),
        "cpu_s": cpu,
        "cpu_ms_per_image": cpu / max(images, 1) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=120)
    parser.add_argument("--latency", type=float, default=5.0, help="seconds per answer (the service: 20-40)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a child's one mode
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    timeout = args.latency + 120
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.url, args.calls, timeout)))
        return
    with emulator_process("--latency", str(args.latency), "--max-concurrency", str(args.calls + 16)) as url:
        rows = {}
        for mode in MODES:
            child = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--url", url, "--calls", str(args.calls)],
                capture_output=True,
                text=True,
                timeout=timeout * 3,
                check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{child.stderr[-2000:]}")
            rows[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{args.calls} generations in flight at once, emulator latency {args.latency:g} s, 1024x1024 PNGs")
    heads = ("images", 7), ("failed", 7), ("wall s", 8), ("RSS MiB", 9), ("peak MiB", 10), ("+MiB", 7)
    print(f"{'mode':<16}" + "".join(f"{h:>{w}}" for h, w in heads) + f"{'CPU s':>7}{'CPU ms/img':>11}")
    for mode, r in rows.items():
        print(
            f"{mode:<16}{r['images']:>7.0f}{r['failed']:>7.0f}{r['wall_s']:>8.1f}{r['rss_before_mib']:>9.1f}"
            f"{r['rss_peak_mib']:>10.1f}{r['rss_peak_mib'] - r['rss_before_mib']:>7.1f}{r['cpu_s']:>7.2f}"
            f"{r['cpu_ms_per_image']:>11.1f}"
        )


if __name__ == "__main__":
    main()
