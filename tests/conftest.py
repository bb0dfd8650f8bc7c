"""Shared fixtures: a fresh emulator per test, connections pointed at it, an isolated AIRFLOW_HOME."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Airflow reads its home and config at import: isolate them before anything imports airflow.
_HOME = Path(os.environ.get("MAI_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="mai-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
_ROOT = Path(__file__).resolve().parents[1]
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_ROOT / "dags")
# dag.test() finds a DAG through the configured bundles: the examples and the suite's own DAGs.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in (
            ("examples", _ROOT / "dags"),
            ("test-dags", _ROOT / "tests" / "integration" / "dags"),
        )
    ]
)
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
# A DAG is re-serialized at most every 30 s by default: a test that parses a DAG differently from the
# test before it (its Asset URI follows MAI_OUTPUT_BASE) would run the earlier test's version.
os.environ["AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL"] = "0"
# One output base for every parse of the examples in this session (in-process DagBags, the airflow
# CLI in subprocesses), so the campaign example's Asset URI, which follows it, is the same wherever
# its DAG is serialized from: Airflow 3.2's dag.test() runs the serialized version already stored.
os.environ["MAI_OUTPUT_BASE"] = str(_HOME / "mai-output")

import pytest  # noqa: E402

from airflow_provider_mai.emulator import MaiEmulator  # noqa: E402
from tests.support.connections import API_KEY, emulator_connection  # noqa: E402
from tests.support.transports import TRANSPORTS, Transport  # noqa: E402

pytest_plugins = ["tests.support.storage_servers", "tests.support.browser"]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database in the suite's AIRFLOW_HOME (made once, ~3 s)."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return _HOME


@pytest.fixture
def emulator() -> Iterator[MaiEmulator]:
    """A running emulator on a free loopback port, with the default deployments."""
    with MaiEmulator(api_key=API_KEY) as emu:
        yield emu


ConnectFn = Callable[..., str]


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch, emulator: MaiEmulator) -> ConnectFn:
    """Define an Airflow connection (as AIRFLOW_CONN_<ID> JSON) to the emulator; returns its id.

    Keyword arguments are those of :func:`emulator_connection`.
    """

    def _connect(conn_id: str = "mai_default", **overrides: Any) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", emulator_connection(emulator, **overrides))
        return conn_id

    return _connect


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening on it."""
    from tests.support.servers import free_port as pick

    return pick()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each transport in turn (sync, async): a test using it is one matrix over both."""
    return Transport(request.param)
