"""How many concurrent generations the emulator holds: time to serve N at once, resets, peak RSS.

The emulator runs in its own process (the CLI); one asyncio client (httpx, as the deferrable mode
uses) opens N connections at once, each POSTing a distinct prompt (no render cache hit: the worst
case), 1024x1024. Printed per N: answers (200), failures by kind (a reset, a drop, a timeout),
seconds until the last answer, the emulator's CPU time per answer (a figure that holds on a busy
machine, where wall-clock seconds do not), and its resident memory: idle, and its peak (the
kernel's ``VmHWM``) over the burst.

    python bench/emulator_capacity.py                         # N = 64, 128, 256; latency 0 and 30 s
    python bench/emulator_capacity.py -n 120 -n 256 --latency 30
    python bench/emulator_capacity.py --emulator-args="--max-concurrency 64 --backlog 5"

``--pythonpath DIR`` runs another copy of the package (e.g. ``git archive main`` unpacked in /tmp)
to compare before and after; without it, the emulator's own CLI defaults apply.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import API_KEY  # bench/ is on sys.path when run as a script

GEN = "/mai/v1/images/generations"


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    """The process's resident set now (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def failure_kind(error: BaseException) -> str:
    causes = [error]
    while len(causes) < 8 and (causes[-1].__cause__ or causes[-1].__context__):
        causes.append(causes[-1].__cause__ or causes[-1].__context__)  # type: ignore[arg-type]
    text = " ".join(f"{type(cause).__name__}: {cause}" for cause in causes).lower()
    if "reset" in text or "errno 104" in text:
        return "reset"
    if "timeout" in text:
        return "timeout"
    if "disconnected" in text or "closed" in text:
        return "dropped"
    return type(error).__name__


async def burst(url: str, n: int, latency: float, tag: str) -> tuple[collections.Counter[str], float]:
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=60.0, read=latency + 240.0, write=60.0, pool=60.0)
    outcomes: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(i: int) -> None:
            body = {"model": "mai-image-2-5", "prompt": f"{tag} prompt {i}", "width": 1024, "height": 1024}
            try:
                response = await client.post(url + GEN, json=body, headers={"api-key": API_KEY})
                outcomes[str(response.status_code)] += 1
            except Exception as error:  # every way a request can fail is a figure here
                outcomes[failure_kind(error)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return outcomes, time.perf_counter() - started


def run(n: int, latency: float, emulator_args: list[str], pythonpath: str | None) -> None:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "airflow_provider_mai.emulator", "--port", "0", "--api-key", API_KEY]
    command += ["--latency", str(latency), *emulator_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it accepts requests
        if "listening on" not in line:
            raise SystemExit(f"the emulator did not start: {line!r} {process.stderr.read()!r}")
        url = line.rsplit(" ", 1)[1].strip()
        idle, cpu = rss_mib(process.pid), cpu_seconds(process.pid)
        outcomes, seconds = asyncio.run(burst(url, n, latency, tag=f"n{n}-l{latency}"))
        peak, cpu = peak_rss_mib(process.pid), cpu_seconds(process.pid) - cpu
    finally:
        process.terminate()
        process.wait(timeout=30)
    answered = outcomes.pop("200", 0)
    failed = ", ".join(f"{count} {kind}" for kind, count in sorted(outcomes.items())) or "none"
    print(
        f"N={n:<4} latency {latency:>3.0f} s  {answered:>3} answered in {seconds:6.1f} s  "
        f"failed: {failed:<14} emulator CPU {cpu / max(answered, 1):4.2f} s/answer  "
        f"RSS idle {idle:3.0f} MiB, peak {peak:5.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, action="append", help="concurrent requests (repeatable)")
    parser.add_argument("--latency", type=float, action="append", help="emulator latency (repeatable)")
    parser.add_argument("--emulator-args", default="", help="more emulator CLI options, one string")
    parser.add_argument("--pythonpath", default=None, help="run the package found in this folder")
    args = parser.parse_args()
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    cap = somaxconn.read_text().strip() if somaxconn.exists() else "unknown"
    print(f"kernel listen backlog cap (net.core.somaxconn): {cap}; cores: {os.cpu_count()}")
    for latency in args.latency or [0.0, 30.0]:
        for n in args.n or [64, 128, 256]:
            run(n, latency, shlex.split(args.emulator_args), args.pythonpath)


if __name__ == "__main__":
    main()
