"""What ``bash scripts/demo.sh`` costs, and where the time goes (README's "Try it" figure).

Runs the README's command as a user would (``bash scripts/demo.sh``, output in a folder of its own)
``--runs`` times in one Airflow home: the first run of a home migrates its database, later runs
find it current. ``--busy N`` keeps N busy processes beside it (``python -c "while True: pass"``,
bounded, stopped by PID), as on a laptop doing other work. Prints one line per run::

    run 1: 21.4 s = venv check 0.6 + database 4.8 + Airflow start-up 9.1 + tasks 5.9 + exit 1.0

- venv check: ``scripts/_venv.sh`` and the demo's own start, until it prints its Airflow home;
- database: ``airflow db migrate`` (first run of a home) or its stamp check (later runs);
- Airflow start-up: from ``airflow dags test`` starting until its first task runs (importing
  Airflow, parsing ``dags/``, the in-process execution API a task talks to);
- tasks: the three tasks, from the first starting to the last ending (two emulator calls);
- exit: Airflow winding down, the emulator's summary.

Usage: ``.venv/bin/python bench/demo_cost.py [--runs 3] [--busy 4]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")
BUSY = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end:\n    pass"


def _log_times(log: Path, marker: str) -> list[float]:
    """The epoch times of the log lines of ``airflow dags test`` that contain ``marker``."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        found = STAMP.match(line)
        if found and marker in line:
            times.append(datetime.fromisoformat(found[1] + "+00:00").timestamp())
    return times


def one_run(home: Path, out: Path) -> dict[str, float]:
    """One ``bash scripts/demo.sh``; the seconds of each phase."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "MAI_OUTPUT_BASE": str(out)}
    started = time.time()
    seen: dict[str, float] = {}
    demo = subprocess.Popen(
        ["bash", "scripts/demo.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert demo.stdout is not None
    printed = []
    for line in demo.stdout:
        printed.append(line)
        for marker in ("Airflow home:", "MAI emulator running", "Running DAG"):
            if line.startswith(marker):
                seen.setdefault(marker, time.time())
    if demo.wait() != 0:
        raise SystemExit("the demo failed:\n" + "".join(printed[-30:]))
    ended = time.time()
    log = out / "last-run.log"
    first_task = _log_times(log, "Task started")[0]
    last_end = _log_times(log, "[DAG TEST] end task")[-1]
    return {
        "total": ended - started,
        "venv check": seen["Airflow home:"] - started,
        "database": seen["MAI emulator running"] - seen["Airflow home:"],
        "Airflow start-up": first_task - seen["Running DAG"],
        "tasks": last_end - first_task,
        "exit": ended - last_end,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs in one Airflow home (default 3)")
    parser.add_argument("--busy", type=int, default=0, help="busy processes beside it (default 0)")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory(prefix="mai-demo-cost-") as folder:
            print(f"{os.cpu_count()} cores, {args.busy} busy processes, load {os.getloadavg()[0]:.1f}")
            for run in range(1, args.runs + 1):
                phases = one_run(Path(folder) / "home", Path(folder) / f"out{run}")
                total = phases.pop("total")
                parts = " + ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
                print(f"run {run}: {total:.1f} s = {parts} (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for process in busy:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
