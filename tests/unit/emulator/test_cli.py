"""The emulator's command line (emulator/__main__.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from airflow_provider_mai.emulator.__main__ import build_parser, emulator_from_args
from airflow_provider_mai.emulator.server import listen_backlog_cap
from tests.support.emulator_requests import GEN


def emulator_process(port: int, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_mai.emulator", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(process: subprocess.Popen[str], idle: list[socket.socket]) -> str:
    """SIGTERM while ``idle`` connections are open; the exit status must be 0. Returns stderr."""
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        for sock in idle:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    return process.stderr.read()


def test_cli_prints_url_serves_and_stops_on_sigterm(free_port):
    process = emulator_process(
        free_port,
        "--api-key",
        "cli-key",
        "--deployment",
        "brand-shots=MAI-Image-2.5-Flash",
        "--rpm",
        "5",
        "--max-concurrency",
        "8",
        "--backlog",
        "100000",
    )
    assert process.stdout is not None
    first_line = process.stdout.readline().strip()
    idle: list[socket.socket] = []
    try:
        assert first_line == f"MAI emulator listening on http://127.0.0.1:{free_port}"
        body = {"model": "brand-shots", "prompt": "p", "width": 768, "height": 768}
        response = requests.post(
            first_line.rsplit(" ", 1)[1] + GEN, json=body, headers={"api-key": "cli-key"}, timeout=30
        )
        assert response.json()["model"] == "MAI-Image-2.5-Flash"
        # Every connection slot (8) held by an idle client, and more waiting: SIGTERM still stops it.
        idle = [socket.create_connection(("127.0.0.1", free_port), timeout=5) for _ in range(14)]
    finally:
        stderr = stop(process, idle)
    # The one-line account of what was spent, printed without --verbose.
    assert "MAI emulator stopped after 1 request(s): 1 image(s) made" in stderr
    cap = listen_backlog_cap()
    if cap is not None and cap < 100000:  # it says the kernel took less than it was asked for
        assert f"the kernel caps the listen backlog at {cap} (net.core.somaxconn), not 100000" in stderr


def test_sigterm_stops_it_with_hundreds_of_connection_threads(free_port):
    # A signal may land on any of the process's threads; the main thread must still act on it.
    process = emulator_process(free_port)
    assert process.stdout is not None
    idle: list[socket.socket] = []
    try:
        assert "listening on" in process.stdout.readline()
        idle = [socket.create_connection(("127.0.0.1", free_port), timeout=5) for _ in range(300)]
        for sock in idle[-3:]:  # taken in (each by its own thread): it answers on the last ones
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        stop(process, idle)


def test_capacity_options_reach_the_emulator():
    args = build_parser().parse_args(["--max-concurrency", "300", "--backlog", "2048", "--max-renders", "3"])
    emulator = emulator_from_args(args)
    assert (emulator.max_concurrency, emulator.backlog, emulator.max_renders) == (300, 2048, 3)
    defaults = emulator_from_args(build_parser().parse_args([]))
    assert defaults.max_concurrency >= 256 and defaults.backlog >= 256


@pytest.mark.parametrize("option", ["--max-concurrency", "--backlog", "--max-renders"])
@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_capacity_options_must_be_whole_numbers_of_at_least_one(capsys, option, value):
    with pytest.raises(SystemExit):
        build_parser().parse_args([option, value])
    assert "expected a whole number of at least 1" in capsys.readouterr().err
