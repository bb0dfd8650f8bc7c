"""DAG-parse cost: what importing the operators adds after ``airflow.sdk`` is loaded.

Each figure is the median over fresh interpreter processes (the import cache makes a second import
in the same process free). Target: <= 10 ms for ``airflow_provider_mai.operators.mai``. For scale the
same is measured for official providers installed in this environment, and for the heavy modules our
operators must not load at import time (they are imported lazily, inside the calls that need them).

    python bench/import_cost.py [--runs 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile

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


def probe_environment(cache_dir: str) -> dict[str, str]:
    """The environment a deployment imports in: bytecode cached (some machines, this project's CI
    among them, set PYTHONDONTWRITEBYTECODE=1, and every import would then compile its source),
    kept in a folder of our own so the checkout and site-packages are not written to."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def measure(module: str, runs: int, env: dict[str, str]) -> tuple[float, str]:
    times, heavy = [], "-"
    for run in range(runs + 1):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
        if run:  # the first run writes the bytecode cache and is not counted
            times.append(float(out[0]))
        heavy = out[1]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="mai-import-cost-")
    env = probe_environment(cache_dir)
    print(f"{'module':<52} {'median ms':>9}  also loaded")
    for module, label in MODULES:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            ms, heavy = measure(module, args.runs, env)
        except subprocess.CalledProcessError:
            print(f"{module:<52} {'n/a':>9}  (not installed here)")
            continue
        print(f"{module:<52} {ms:9.1f}  {heavy}   # {label}")


if __name__ == "__main__":
    main()
