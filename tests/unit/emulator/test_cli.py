"""The emulator's command line (emulator/__main__.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import requests

from tests.support.emulator_requests import GEN


def test_cli_prints_url_serves_and_stops_on_sigterm(free_port):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_mai.emulator",
            "--port",
            str(free_port),
            "--api-key",
            "cli-key",
            "--deployment",
            "brand-shots=MAI-Image-2.5-Flash",
            "--rpm",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first_line = process.stdout.readline().strip()
        assert first_line == f"MAI emulator listening on http://127.0.0.1:{free_port}"
        body = {"model": "brand-shots", "prompt": "p", "width": 768, "height": 768}
        response = requests.post(
            first_line.rsplit(" ", 1)[1] + GEN, json=body, headers={"api-key": "cli-key"}, timeout=30
        )
        assert response.json()["model"] == "MAI-Image-2.5-Flash"
        # Every connection slot (64) held by an idle client, and more waiting: SIGTERM still stops it.
        idle = [socket.create_connection(("127.0.0.1", free_port), timeout=5) for _ in range(70)]
        try:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            for sock in idle:
                sock.close()
        # The one-line account of what was spent, printed without --verbose.
        assert "MAI emulator stopped after 1 request(s): 1 image(s) made" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
