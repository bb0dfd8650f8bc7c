"""DAG-parse cost: what importing the operators adds after ``airflow.sdk`` is loaded.

Each figure is the median over fresh interpreter processes (the import cache makes a second import
in the same process free). Target: <= 30 ms for ``airflow_provider_mai.operators.mai``. For scale the
same is measured for official providers installed in this environment, and for the heavy modules our
operators must not load at import time (they are imported lazily, inside the calls that need them).

    python bench/import_cost.py [--runs 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys

PROBE = """
import time, sys
import airflow.sdk
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
lazy = ("requests", "urllib3", "azure.identity", "PIL", "airflow_provider_mai.hooks.mai")
heavy = [m for m in lazy if m in sys.modules]
print(f"{{(t1 - t0) * 1000:.2f}} {{','.join(heavy) or '-'}}")
"""

MODULES = [
    ("airflow_provider_mai.operators.mai", "ours: both operators"),
    ("airflow_provider_mai.hooks.mai", "ours: the hook (loaded when a task runs)"),
    ("requests", "requests alone"),
    ("azure.identity", "azure.identity alone"),
    ("airflow.providers.http.operators.http", "official http provider operators"),
    ("airflow.providers.microsoft.azure.hooks.base_azure", "official microsoft-azure base hook"),
    ("airflow.providers.openai.operators.openai", "official openai provider operators"),
]


def measure(module: str, runs: int) -> tuple[float, str]:
    times, heavy = [], "-"
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
        ).stdout.split()
        times.append(float(out[0]))
        heavy = out[1]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(f"{'module':<52} {'median ms':>9}  also loaded")
    for module, label in MODULES:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            ms, heavy = measure(module, args.runs)
        except subprocess.CalledProcessError:
            print(f"{module:<52} {'n/a':>9}  (not installed here)")
            continue
        print(f"{module:<52} {ms:9.1f}  {heavy}   # {label}")


if __name__ == "__main__":
    main()
