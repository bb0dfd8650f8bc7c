"""Run the ``mai_generate_then_edit`` example DAG end to end on real Airflow, offline.

Starts the embedded MAI emulator, points the ``mai_default`` connection at it (an
``AIRFLOW_CONN_MAI_DEFAULT`` variable), runs ``airflow dags test`` on a local SQLite metadata
database, prints where the generated and edited PNGs landed, and stops the emulator.

Environment: ``MAI_OUTPUT_BASE`` (default ``./out``), ``AIRFLOW_HOME`` (default ``./.airflow-home``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from airflow_provider_mai.emulator import MaiEmulator

    output_base = Path(os.environ.get("MAI_OUTPUT_BASE") or ROOT / "out").resolve()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or ROOT / ".airflow-home").resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MAI_OUTPUT_BASE": str(output_base),
    }
    airflow = [sys.executable, "-m", "airflow"]
    started = time.monotonic()
    print(f"Airflow home: {airflow_home} (SQLite metadata database)", flush=True)
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)

    with MaiEmulator() as emulator:
        print(f"MAI emulator running at {emulator.url}", flush=True)
        env["AIRFLOW_CONN_MAI_DEFAULT"] = emulator.connection_uri()
        log_path = output_base / "last-run.log"
        output_base.mkdir(parents=True, exist_ok=True)
        print("Running DAG mai_generate_then_edit with `airflow dags test` ...", flush=True)
        conf = json.dumps({"output_base": str(output_base)})
        with open(log_path, "w") as log:
            result = subprocess.run(
                [*airflow, "dags", "test", "mai_generate_then_edit", "--conf", conf],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        served = len(emulator.requests)
    print(f"MAI emulator stopped after {served} request(s)", flush=True)

    lines = log_path.read_text(errors="replace").splitlines()
    landed = [line for line in lines if line.startswith("MAI ") and " image: " in line]
    if result.returncode != 0 or len(landed) != 2 or "state=success" not in "\n".join(lines):
        print("\n".join(lines[-40:]))
        print(f"\nThe DAG run failed (exit {result.returncode}); full log: {log_path}", file=sys.stderr)
        return 1
    print("\n".join(landed))
    print(
        f"Done in {time.monotonic() - started:.1f} s. Sidecars (.json) sit beside each PNG; log: {log_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
