"""Soak: many generations through the operator against a flaky emulator; every request accounted for.

Starts the emulator CLI in its own process with ``--fault-rate`` (random 429s, 5xx, 408s, dropped,
reset and truncated connections), then runs N generations - each a fresh operator and hook, as
Airflow tasks are - from a pool of threads, writing PNG + sidecar to a local folder. A few prompts
are ones the content filter blocks and a few name a deployment that does not exist: those must fail
clearly, once, without retries. Afterwards every output is checked: each success is a complete PNG
whose sha256 matches its sidecar, each failure left nothing behind, and no temp file remains.

    python bench/soak.py                      # 1,000 generations, 10 % faults, 8 threads
    python bench/soak.py -n 200 --fault-rate 0.2

Prints the figures; exits non-zero when anything is unaccounted for.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from _common import connection_json, emulator_process  # bench/ is on sys.path when run as a script


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--generations", type=int, default=1000)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    with emulator_process("--fault-rate", str(args.fault_rate), "--seed", str(args.seed)) as url:
        # Short backoff so the soak takes minutes, not hours; Retry-After is still honoured.
        os.environ["AIRFLOW_CONN_MAI_DEFAULT"] = connection_json(url, max_retries=8, retry_base_delay=0.2)
        return soak(args)


def soak(args: argparse.Namespace) -> int:
    """Run the generations, then account for every one of them; 1 when anything is unaccounted."""
    from airflow_provider_mai.exceptions import MaiContentFilterError, MaiError, MaiNotFoundError
    from airflow_provider_mai.hooks.mai import MaiHook
    from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
    from airflow_provider_mai.validation import png_size

    out = Path(tempfile.mkdtemp(prefix="mai-soak-out-"))
    retries = collections.Counter()
    lock = threading.Lock()
    outcomes: dict[int, object] = {}

    def one(i: int) -> None:
        prompt, model = f"soak image {i}", None
        if i % 100 == 17:
            prompt += " emulator-blocked"  # permanent: content filter
        if i % 100 == 53:
            model = "no-such-deployment"  # permanent: 404
        op = MaiGenerateImageOperator(
            task_id=f"g{i}", prompt=prompt, model=model, width=768, height=768, output_path=f"{out}/{i}.png"
        )

        def counting_sleep(seconds: float) -> None:
            with lock:
                retries[i] += 1
            time.sleep(seconds)

        op.hook = MaiHook(op.mai_conn_id, sleep=counting_sleep)
        context = {"ti": SimpleNamespace(dag_id="soak", task_id=f"g{i}", map_index=-1), "run_id": "soak"}
        try:
            outcomes[i] = op.execute(context)
        except MaiError as exc:
            outcomes[i] = exc

    rss_start = rss_mb()
    started = time.monotonic()
    rss_samples = []
    with ThreadPoolExecutor(args.threads) as pool:
        for k, _ in enumerate(pool.map(one, range(args.generations))):
            if k % 100 == 99:
                rss_samples.append(round(rss_mb(), 1))
    elapsed = time.monotonic() - started
    rss_end = rss_mb()

    # Account for every request.
    ok = [i for i, o in outcomes.items() if isinstance(o, dict)]
    errors = {i: o for i, o in outcomes.items() if isinstance(o, MaiError)}
    half_written = 0
    for i in ok:
        png = (out / f"{i}.png").read_bytes()
        sidecar = json.loads((out / f"{i}.json").read_text())
        try:
            png_size(png)
        except Exception:
            half_written += 1
            continue
        if hashlib.sha256(png).hexdigest() != sidecar["sha256"] or sidecar["sha256"] != outcomes[i]["sha256"]:
            half_written += 1
    leftovers = [p.name for i in errors for p in (out / f"{i}.png", out / f"{i}.json") if p.exists()]
    temp_files = [p.name for p in out.iterdir() if p.name.startswith(".")]
    expected_permanent = {i for i in range(args.generations) if i % 100 in (17, 53)}
    by_kind = collections.Counter(type(e).__name__ for e in errors.values())
    unexpected = {
        i: f"{type(e).__name__}: {e}"
        for i, e in errors.items()
        if i not in expected_permanent or not isinstance(e, MaiContentFilterError | MaiNotFoundError)
    }

    print(
        f"generations requested : {args.generations} "
        f"({args.threads} threads, fault rate {args.fault_rate:.0%})"
    )
    print(f"succeeded             : {len(ok)} (PNG + sidecar, sha256 checked)")
    print(f"failed clearly        : {len(errors)} {dict(by_kind)}")
    print(f"unaccounted           : {args.generations - len(ok) - len(errors)}")
    print(f"unexpected failures   : {len(unexpected)} {list(unexpected.values())[:3]}")
    print(
        f"half-written files    : {half_written}; files left by failures: {len(leftovers)}; "
        f"temp files: {len(temp_files)}"
    )
    print(
        f"retries used          : {sum(retries.values())} "
        f"(max {max(retries.values(), default=0)} for one image)"
    )
    print(f"total time            : {elapsed:.1f} s ({args.generations / elapsed:.1f} generations/s)")
    print(f"RSS (MB)              : start {rss_start:.1f}, every 100: {rss_samples}, end {rss_end:.1f}")
    bad = args.generations - len(ok) - len(errors) or unexpected or half_written or leftovers or temp_files
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
