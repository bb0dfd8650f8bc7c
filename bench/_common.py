"""Shared by the benchmarks: an emulator in its own process (so it does not skew our figures)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="mai-bench-airflow-"))


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """Run ``python -m airflow_provider_mai.emulator`` on a free port; yield its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_mai.emulator", "--port", "0", "--api-key", API_KEY, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it accepts requests
        if "listening on" not in line:
            raise SystemExit(f"the emulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def connection_json(url: str, **extra: object) -> str:
    """An ``AIRFLOW_CONN_...`` value for the emulator at ``url``."""
    return json.dumps(
        {
            "conn_type": "mai",
            "host": url,
            "password": API_KEY,
            "extra": {"deployment": "mai-image-2-5", **extra},
        }
    )


def latency_range(text: str) -> tuple[float, float]:
    """A ``--latency`` option: ``LOW-HIGH`` seconds, or one figure for both."""
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def running_stack() -> tuple[Any, Any]:
    """The stack's state and its REST API (scripts/stack/); exit when the stack is not up."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from stack import state

    stack = state.Stack()
    if stack.running("api-server") is None:
        raise SystemExit("the stack is not up: bash scripts/stack.sh up")
    return stack, stack.api()
