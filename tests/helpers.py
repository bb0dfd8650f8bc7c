"""Small test helpers: real images drawn with Pillow, DAG runs on real Airflow."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def make_png(width: int = 800, height: int = 600, colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    """A real PNG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_jpeg(width: int = 553, height: int = 311) -> bytes:
    """A real JPEG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(buffer, "JPEG")
    return buffer.getvalue()


def reserve_pacing_slots(state_dir: str, rpm: float, count: int, queue) -> None:  # type: ignore[no-untyped-def]
    """In a child process: take ``count`` send slots and report their wall-clock times."""
    import time

    from airflow_provider_mai.pacing import RequestPacer

    seen: list[float] = []

    def clock() -> float:  # remember the instant the pacer read, to report the exact slot
        seen.append(time.time())
        return seen[-1]

    pacer = RequestPacer("shared", rpm=rpm, state_dir=state_dir, clock=clock)
    slots = []
    for _ in range(count):
        wait = pacer.reserve()
        slots.append(seen[-1] + wait)
    queue.put(slots)


def airflow_dags_test(dag_id: str, env: dict[str, str], conf: dict | None = None):  # type: ignore[no-untyped-def]
    """Run ``airflow dags test DAG_ID`` in a child process, as a user would; return its result."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def load_dag(dag_id: str):
    """An example DAG (``dags/``) or a test DAG (``tests/dags/``, ids starting ``mai_test_``)."""
    from airflow.dag_processing.dagbag import DagBag

    root = Path(__file__).resolve().parents[1]
    folder = root / ("tests/dags" if dag_id.startswith("mai_test_") else "dags")
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None):
    """Run a DAG with dag.test(); return the run, task states and XCom return values."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run = load_dag(dag_id).test(run_conf=conf)
    with create_session() as session:
        states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances(session=session)}
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run.run_id, key="return_value").all()
        xcoms = {(row.task_id, row.map_index): XComModel.deserialize_value(row) for row in rows}
    return run, states, xcoms
