"""The demo starts Airflow so that it loads the provider's plugin once and reports no import error.

Airflow run as ``python -m airflow`` from the checkout finds the provider twice (the editable
install's ``airflow_provider_mai.egg-info`` in the working directory, and its ``.dist-info`` in the
virtualenv) and reports "Plugin 'mai_images' already registered" as a plugin import error in the UI.
``scripts/run_demo.py`` starts Airflow by its console script instead; these tests start the demo and
Airflow exactly as ``bash scripts/demo.sh --ui`` does, from the repository's root.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.airflow_stack import AirflowClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import run_demo  # noqa: E402  (scripts/run_demo.py)

pytestmark = pytest.mark.integration

#: The whole demo (a DAG run, then an api-server) on a loaded 2-core machine, generously.
DEMO_READY_WITHIN = 600.0


def _demo_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "MAI_OUTPUT_BASE": str(tmp_path / "out")}


def test_the_checkout_holds_the_metadata_that_python_m_airflow_would_see_twice(tmp_path):
    """The premise: an editable install leaves the provider's metadata in the repository's root,
    which ``-m`` / ``-c`` put first on ``sys.path``; from anywhere else it is found once."""
    if not (ROOT / "airflow_provider_mai.egg-info").is_dir():
        pytest.skip("no airflow_provider_mai.egg-info in the checkout (not an editable setuptools install)")
    probe = "from importlib import metadata as m; print(len([*m.distributions(name='airflow-provider-mai')]))"

    def found_from(folder: Path) -> str:
        seen = subprocess.run(
            [sys.executable, "-c", probe], cwd=folder, capture_output=True, text=True, timeout=120, check=True
        )
        return seen.stdout.strip()

    assert found_from(ROOT) == "2"
    assert found_from(tmp_path) == "1"
    assert Path(run_demo.AIRFLOW[0]).name == "airflow"  # the demo's way round it: the console script


def test_airflow_plugins_lists_mai_images_once_when_started_as_the_demo_does(tmp_path):
    listed = subprocess.run(
        [*run_demo.AIRFLOW, "plugins", "--output", "json"],
        cwd=ROOT,
        env={**_demo_env(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Airflow may print warnings first: the JSON is the last line that is a list.
    plugins = json.loads([line for line in listed.stdout.splitlines() if line.startswith("[")][-1])
    assert [plugin["name"] for plugin in plugins].count("mai_images") == 1
    assert "already registered" not in listed.stdout + listed.stderr


def test_the_demo_ui_serves_the_images_loads_the_plugin_once_and_stops_on_ctrl_c(tmp_path):
    """``bash scripts/demo.sh --ui``: the DAG run, then the api-server on loopback with a login; it
    and the run's own Airflow load ``mai_images`` once; Ctrl-C stops the api-server by its PID."""
    demo = subprocess.Popen(
        [sys.executable, "scripts/run_demo.py", "--ui", "--port", "0"],
        cwd=ROOT,  # where demo.sh runs it, next to the egg-info
        env=_demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C below reaches the demo alone, as a terminal's would
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True).start()
    printed: list[str] = []
    url = None
    try:
        deadline = time.monotonic() + DEMO_READY_WITHIN
        while not any(line.startswith("Sign in as admin") for line in printed):
            assert demo.poll() is None, "".join(printed)
            assert time.monotonic() < deadline, "".join(printed)
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(printed)
        assert "MAI emulator stopped after 2 request(s): 2 image(s) made" in text  # what it spent
        url = re.search(r"MAI images in Airflow's UI: (http://127\.0\.0\.1:\d+)/plugin/mai-images", text)[1]
        tab = rf"{re.escape(url)}/dags/mai_generate_then_edit/runs/\S+/tasks/edit/plugin/mai-image"
        assert re.search(tab, text)  # the printed link to the edit's image tab
        client = AirflowClient(url, {"admin": re.search(r"Sign in as admin, password (\S+)", text)[1]})

        status, errors = client.call("GET", "/api/v2/plugins/importErrors")
        assert status == 200, errors
        assert errors == {"import_errors": [], "total_entries": 0}
        status, answer = client.call("GET", "/api/v2/plugins")
        assert status == 200, answer
        assert [plugin["name"] for plugin in answer["plugins"]].count("mai_images") == 1
        # The DAG run's own Airflow (airflow dags test) loaded it once too.
        assert "already registered" not in (tmp_path / "out" / "last-run.log").read_text()
        assert client.call("GET", "/mai/gallery", user=None)[0] == 401
        status, page = client.call("GET", "/mai/gallery", user="admin")
        assert status == 200 and b'data-task="generate"' in page and b'data-task="edit"' in page
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops its api-server by its PID
        assert demo.wait(timeout=180) == 0, "".join(printed)
    if url is not None:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5)
