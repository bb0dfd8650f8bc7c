"""Running the tests' real servers (storage emulators, Airflow's api-server) as child processes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


def unavailable(reason: str) -> None:
    """Skip for a missing tool - or fail under CI (``CI=true``), which installs every tool.

    CI's oldest-Airflow run installs only the core test tools and sets ``MAI_ALLOW_SKIPS=1``.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not os.environ.get("MAI_ALLOW_SKIPS"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(
    command: list[str],
    ready_url: str,
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    ready_within: float = 60.0,
) -> Iterator[subprocess.Popen]:
    """Start ``command``, poll ``ready_url`` until it answers (bounded), stop it afterwards."""
    log = Path(tempfile.mkstemp(prefix=f"mai-{name}-", suffix=".log")[1])
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(), env=env
        )
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # an HTTP error is an answer: the server is up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer at {ready_url} within {ready_within:.0f} s: "
                        f"{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
