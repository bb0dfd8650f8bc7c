"""The UI plugin's routes, in Airflow's own api-server app (in process), over real DAG runs.

``mai_test_ui`` runs once on real Airflow against the emulator; the api-server app (``create_app``
with our plugin loaded from its entry point) then answers as it would in production: Airflow's
auth (an auth manager with per-DAG rules, see ``tests/ui_auth.py``), the metadata database, and the
images read back through ``ObjectStoragePath`` from a folder, moto's S3 and Azurite.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from airflow_provider_mai.links import image_query
from tests.conftest import API_KEY, emulator_connection
from tests.helpers import run_dag

pytestmark = pytest.mark.integration

DAG_ID = "mai_test_ui"
USERS = {"admin": "admin", "viewer": "viewer", "outsider": "viewer"}
PASSWORDS = {name: f"{name}-secret-pw" for name in USERS}
ROUTES = ("gallery", "run", "ti", "image", "thumb", "sidecar")


def api_server_auth_env(home: Path) -> dict[str, str]:
    """Environment for an api-server with our per-DAG auth manager and three users.

    ``outsider`` may read every DAG but ``mai_test_ui``; ``viewer`` and ``admin`` read all.
    """
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    passwords.chmod(0o600)
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui_auth.PerDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r}" for n, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "MAI_TEST_HIDDEN_DAGS": DAG_ID,
        "MAI_TEST_RESTRICTED_USERS": "outsider",
        "AIRFLOW__API_AUTH__JWT_SECRET": "mai-ui-tests-" + "j" * 64,
    }


def run_ui_dag(emulator: MaiEmulator, out: str) -> SimpleNamespace:
    """Run ``mai_test_ui`` writing under ``out``; the run id, task states and results."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MAI_DEFAULT", emulator_connection(emulator))
        run, states, xcoms = run_dag(DAG_ID, {"out": out})
    return SimpleNamespace(run_id=run.run_id, states=states, xcoms=xcoms)


@pytest.fixture(scope="module")
def ui_run(airflow_db, tmp_path_factory) -> SimpleNamespace:
    """One run of ``mai_test_ui`` with its images in a local folder."""
    out = tmp_path_factory.mktemp("ui-images")
    with MaiEmulator(api_key=API_KEY) as emulator:
        run = run_ui_dag(emulator, str(out))
    run.out = out
    return run


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory) -> Iterator[Any]:
    """Airflow's api-server app in process (our plugin mounted from its entry point)."""
    from fastapi.testclient import TestClient

    from airflow.api_fastapi import app as api_app

    home = tmp_path_factory.mktemp("ui-auth")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in api_server_auth_env(home).items():
            patch.setenv(name, value)
        api_app.purge_cached_app()
        api_app._AuthManagerState.instance = None
        try:
            with TestClient(api_app.create_app(apps="core")) as client:
                yield client
        finally:
            api_app.purge_cached_app()
            api_app._AuthManagerState.instance = None


@pytest.fixture(scope="module")
def tokens(api) -> dict[str, str]:
    """An access token per user, from Airflow's own login endpoint."""
    found = {}
    for name, password in PASSWORDS.items():
        answer = api.post("/auth/token", json={"username": name, "password": password})
        assert answer.status_code == 201, answer.text
        found[name] = answer.json()["access_token"]
    return found


def as_user(tokens: dict[str, str], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[name]}"}


def route(name: str, run_id: str, task_id: str = "edit", map_index: int | str = -1) -> str:
    if name == "gallery":
        return "/mai/gallery"
    if name == "run":
        return f"/mai/run?dag_id={DAG_ID}&run_id={run_id}"
    query = image_query(DAG_ID, run_id, task_id, -1).replace("map_index=-1", f"map_index={map_index}")
    return f"/mai/{name}?{query}"


class _Page(HTMLParser):
    """The parts of a plugin page the tests look at: image sources, cards by chain, links."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.chains: list[list[str]] = []
        self.cards: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "img":
            self.images.append(attributes["src"] or "")
        elif tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"] or "")
        elif tag == "div" and "chain" in classes:
            self.chains.append([])
        elif tag == "figure" and "card" in classes:
            self.cards.append(attributes["data-task"] or "")
            if self.chains:
                self.chains[-1].append(attributes["data-task"] or "")


def image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


# -- registration ----------------------------------------------------------------------------------


def test_plugin_registers_through_its_entry_point_with_relative_views(api, tokens):
    answer = api.get("/api/v2/plugins", headers=as_user(tokens, "admin"))
    assert answer.status_code == 200
    (plugin,) = [p for p in answer.json()["plugins"] if p["name"] == "mai_images"]
    assert "airflow.plugins" in plugin["source"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/mai"]
    views = {view["url_route"]: view for view in plugin["external_views"]}
    assert views["mai-images"]["destination"] == "nav" and views["mai-images"]["category"] == "browse"
    assert views["mai-image"]["destination"] == "task_instance"
    assert views["mai-run-images"]["destination"] == "dag_run"
    for view in views.values():
        assert not view["href"].startswith(("/", "http")), view  # relative to the UI's base
    assert "{MAP_INDEX}" in views["mai-image"]["href"]
    assert answer.json()["total_entries"] == len(answer.json()["plugins"])
    # Declared once: the entry point only, never also a provider info "plugins" key (Airflow would
    # then report "already registered"). The checkout's own egg-info, on sys.path under pytest, can
    # make Airflow see this same distribution twice; nothing else may fail.
    from airflow_provider_mai.get_provider_info import get_provider_info

    assert "plugins" not in get_provider_info()
    import_errors = api.get("/api/v2/plugins/importErrors", headers=as_user(tokens, "admin")).json()
    failures = [e for e in import_errors["import_errors"] if "mai" in json.dumps(e)]
    assert all("already registered" in e["error"] and "airflow-provider-mai" in e["source"] for e in failures)


# -- auth ------------------------------------------------------------------------------------------


def test_every_route_needs_a_signed_in_user(api, ui_run):
    for name in ROUTES:
        assert api.get(route(name, ui_run.run_id)).status_code == 401, name
        forged = api.get(route(name, ui_run.run_id), headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 403, name


def test_a_user_who_may_not_read_the_dag_gets_403_and_the_dag_is_asked_about(api, tokens, ui_run):
    from tests.ui_auth import QUESTIONS

    outsider = as_user(tokens, "outsider")
    for name in ROUTES[1:]:
        del QUESTIONS[:]
        answer = api.get(route(name, ui_run.run_id), headers=outsider)
        assert answer.status_code == 403, name
        assert ("outsider", "GET", "XCOM", DAG_ID) in QUESTIONS, (name, QUESTIONS)
    page = api.get(route("ti", ui_run.run_id), headers={**outsider, "Accept": "text/html"})
    assert "You do not have permission" in page.text and page.headers["content-type"].startswith("text/html")
    # The gallery answers, without the DAG it may not read; asking for that DAG is refused.
    gallery = api.get("/mai/gallery", headers=outsider)
    assert gallery.status_code == 200 and ui_run.run_id not in gallery.text
    assert api.get(f"/mai/gallery?dag_id={DAG_ID}", headers=outsider).status_code == 403
    # A reader of the DAG sees it.
    viewer = api.get(route("ti", ui_run.run_id), headers=as_user(tokens, "viewer"))
    assert viewer.status_code == 200
