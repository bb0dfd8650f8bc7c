"""The UI plugin's routes, in Airflow's own api-server app (in process), over real DAG runs.

``mai_test_ui`` runs once on real Airflow against the emulator; the api-server app (``create_app``
with our plugin loaded from its entry point) then answers as it would in production: Airflow's
auth (an auth manager with per-DAG rules, see ``tests/support/ui_auth.py``), the metadata database, and the
images read back through ``ObjectStoragePath`` from a folder, moto's S3 and Azurite."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from airflow_provider_mai.links import image_query
from tests.support.connections import API_KEY, emulator_connection
from tests.support.helpers import make_png, run_dag
from tests.support.ui_auth import PASSWORDS, api_server_auth_env

pytestmark = pytest.mark.integration


DAG_ID = "mai_test_ui"


ROUTES = ("gallery", "run", "ti", "image", "thumb", "sidecar")


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
    from airflow.api_fastapi import app as api_app
    from fastapi.testclient import TestClient

    home = tmp_path_factory.mktemp("ui-auth")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in api_server_auth_env(home, hidden_dags=[DAG_ID]).items():
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


def route(
    name: str, run_id: str, task_id: str = "edit", map_index: int | str = -1, dag_id: str = DAG_ID
) -> str:
    if name == "gallery":
        return "/mai/gallery"
    if name == "run":
        return f"/mai/run?{urlencode({'dag_id': dag_id, 'run_id': run_id})}"
    query = image_query(dag_id, run_id, task_id, -1).replace("map_index=-1", f"map_index={map_index}")
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
    from tests.support.ui_auth import QUESTIONS

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


# -- pages -----------------------------------------------------------------------------------------
def test_gallery_shows_the_run_with_edits_beside_their_sources_and_only_thumbnails(api, tokens, ui_run):
    answer = api.get("/mai/gallery", headers=as_user(tokens, "viewer"))
    assert answer.status_code == 200
    html = answer.text
    page = _Page(html[html.index(f'data-run="{ui_run.run_id}"') :].split("</section>")[0])
    # Mapped generations, the edit of the second one beside it, the image kept in XCom; not the
    # plain task's look-alike result, not the failed task.
    assert sorted(page.cards) == ["edit", "generate[0]", "generate[1]", "inline"]
    assert ["generate[1]", "edit"] in page.chains
    assert all(src.startswith("thumb?") and "size=320" in src for src in page.images), page.images
    assert not [src for src in page.images if src.startswith("image?")]  # no full-size image loads
    for link in page.links:
        assert not link.startswith(("/", "http")), link  # relative: works behind a proxy prefix
    # The caption: prompt (escaped), model, size, AI disclosure.
    assert "a red kite &lt;b&gt;at dusk&lt;/b&gt;" in html and "<b>at dusk" not in html
    assert "MAI-Image-2.5" in html and "1024\u00d7768" in html
    assert 'class="badge ai" title="This image was generated or edited by an AI model' in html
    csp = answer.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "script-src 'nonce-" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp)[1]
    assert f'<script nonce="{nonce}">' in html and html.count("<script") == 1
    again = api.get("/mai/gallery", headers=as_user(tokens, "viewer")).headers["content-security-policy"]
    assert again != csp  # a fresh nonce per response


def test_gallery_filters_by_dag_and_date(api, tokens, ui_run):
    viewer = as_user(tokens, "viewer")
    assert ui_run.run_id in api.get(f"/mai/gallery?dag_id={DAG_ID}", headers=viewer).text
    assert ui_run.run_id not in api.get("/mai/gallery?dag_id=mai_generate_then_edit", headers=viewer).text
    assert ui_run.run_id not in api.get("/mai/gallery?until=2001-01-01", headers=viewer).text
    assert ui_run.run_id in api.get("/mai/gallery?since=2001-01-01&until=2999-12-31", headers=viewer).text
    bad = api.get("/mai/gallery?since=yesterday", headers=viewer)
    assert bad.status_code == 400 and "since must be a date" in bad.text
    assert f'<option value="{DAG_ID}"' in api.get("/mai/gallery", headers=viewer).text


def test_task_instance_tab_of_an_unmapped_task_reads_the_literal_map_index(api, tokens, ui_run):
    # The UI leaves {MAP_INDEX} unfilled on an unmapped task's tab.
    answer = api.get(route("ti", ui_run.run_id, "edit", "{MAP_INDEX}"), headers=as_user(tokens, "viewer"))
    assert answer.status_code == 200
    page = _Page(answer.text)
    edited = ui_run.xcoms[("edit", -1)]
    assert page.images[0].startswith("image?") and f"v={edited['sha256'][:16]}" in page.images[0]
    assert "edited from" in answer.text and "generate[1]" in answer.text
    assert edited["request_id"] in answer.text and edited["sha256"] in answer.text
    assert "<td>source_image</td>" in answer.text and "<td>request_fingerprint</td>" in answer.text
    assert "This image was generated or edited by an AI model" in answer.text


def test_task_instance_tab_of_a_mapped_task(api, tokens, ui_run):
    viewer = as_user(tokens, "viewer")
    one = _Page(api.get(route("ti", ui_run.run_id, "generate", 0), headers=viewer).text)
    assert one.images[0].startswith("image?") and "map_index=0" in one.images[0]
    assert (
        "Related images in this run"
        not in api.get(route("ti", ui_run.run_id, "generate", 0), headers=viewer).text
    )
    # The mapped task's own tab (no index): every map index.
    every = _Page(api.get(route("ti", ui_run.run_id, "generate", "{MAP_INDEX}"), headers=viewer).text)
    assert every.cards == ["generate[0]", "generate[1]"]


@pytest.mark.parametrize(
    ("task_id", "status", "reason"),
    [("pick", 200, "not-mai"), ("blocked", 200, "no-image-failed"), ("nowhere", 404, "missing")],
)
def test_task_instance_tab_says_plainly_why_there_is_no_image(api, tokens, ui_run, task_id, status, reason):
    answer = api.get(route("ti", ui_run.run_id, task_id, "{MAP_INDEX}"), headers=as_user(tokens, "viewer"))
    assert answer.status_code == status
    assert f'data-reason="{reason}"' in answer.text
    assert "<img" not in answer.text
    if reason == "not-mai":
        assert "pick (a _PythonDecoratedOperator) is not a MAI image task" in answer.text
    # The look-alike result of a plain task is never served as an image either.
    if task_id == "pick":
        assert (
            api.get(route("image", ui_run.run_id, "pick"), headers=as_user(tokens, "viewer")).status_code
            == 404
        )


def test_run_tab_lists_every_image_of_the_run(api, tokens, ui_run):
    answer = api.get(route("run", ui_run.run_id), headers=as_user(tokens, "viewer"))
    assert answer.status_code == 200
    assert sorted(_Page(answer.text).cards) == ["edit", "generate[0]", "generate[1]", "inline"]
    missing = api.get(f"/mai/run?dag_id={DAG_ID}&run_id=no-such-run", headers=as_user(tokens, "viewer"))
    assert missing.status_code == 404


def test_bad_parameters_are_clear_400s(api, tokens, ui_run):
    viewer = as_user(tokens, "viewer")
    bad_index = api.get(route("image", ui_run.run_id, "edit", "first"), headers=viewer)
    assert bad_index.status_code == 400 and "map_index must be a whole number" in bad_index.json()["detail"]
    bad_size = api.get(route("thumb", ui_run.run_id) + "&size=4000", headers=viewer)
    assert bad_size.status_code == 400 and "size must be one of 160, 320" in bad_size.json()["detail"]
    for name in ("image", "thumb", "ti", "sidecar"):
        huge = api.get(route(name, ui_run.run_id, "edit", 10**20), headers=viewer)
        assert huge.status_code == 400 and "map_index must be at most" in huge.text, name
    for query in ("until=9999-12-31", "since=0001-01-01", "page=0", "page=10000000000"):
        out_of_range = api.get(f"/mai/gallery?{query}", headers=viewer)
        assert out_of_range.status_code == 400, query
    missing = api.get(f"/mai/image?dag_id={DAG_ID}", headers=viewer)
    assert missing.status_code == 400 and "run_id" in missing.json()["detail"]


# -- pairs: each edit beside its source, pages within a run ---------------------------------------
PAIRS = "mai_test_ui_pairs"


@pytest.fixture(scope="module")
def pair_runs(airflow_db, tmp_path_factory) -> SimpleNamespace:
    """Two runs of ``mai_test_ui_pairs``: 12 generations each edited once (``generate.output.map``),
    and 3 + 3 with one more edit of a photo that is not an image of the run."""
    out = tmp_path_factory.mktemp("pairs")
    photo = out / "photo.png"
    photo.write_bytes(make_png(64, 48))
    with MaiEmulator(api_key=API_KEY) as emulator, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MAI_DEFAULT", emulator_connection(emulator))
        big, big_states, _ = run_dag(PAIRS, {"out": str(out / "big"), "count": 12})
        small, small_states, small_xcoms = run_dag(
            PAIRS, {"out": str(out / "small"), "count": 3, "photos": [str(photo)]}
        )
    assert big_states.pop(("retouch", -1)) == "skipped"  # no photos: nothing to map over
    assert set(big_states.values()) == set(small_states.values()) == {"success"}
    assert len(big_states) == 2 + 24 and small_xcoms[("retouch", 0)]["source_image"].endswith("photo.png")
    return SimpleNamespace(big=big.run_id, small=small.run_id)


def run_section(html: str, run_id: str) -> str:
    return html[html.index(f'data-run="{run_id}"') :].split("</section>")[0]


def text_of(html: str, css_class: str) -> str:
    """The text of the first element of class ``css_class``, tags dropped, spaces collapsed."""
    start = html.index(f'class="{css_class}')
    inner = html[html.index(">", start) + 1 :]
    depth, end = 0, 0
    for match in re.finditer(r"<(/?)(span|p)\b[^>]*>", inner):
        if match[1] and depth == 0:
            end = match.start()
            break
        depth += -1 if match[1] else 1
    return " ".join(re.sub(r"<[^>]+>", " ", inner[:end]).split())


def one_run(run_id: str, page: int | None = None, route_name: str = "gallery") -> str:
    query = {"dag_id": PAIRS, "run_id": run_id, **({"page": page} if page else {})}
    return f"/mai/{route_name}?{urlencode(query)}"


def test_gallery_shows_each_edit_beside_its_source_in_map_index_order(api, tokens, pair_runs):
    viewer = as_user(tokens, "viewer")
    html = run_section(api.get(f"/mai/gallery?dag_id={PAIRS}", headers=viewer).text, pair_runs.big)
    # Before: the first 12 results by XCom time - 12 generations, shuffled - and "12 images" over
    # "Showing 12 of 24". Now: a page of 12 images, pairs in map-index order; counts of the run.
    assert _Page(html).chains == [[f"generate[{i}]", f"edit[{i}]"] for i in range(6)]
    assert text_of(html, "when counts") == "24 images (12 generated, 12 edited) in 12 pairs"
    assert text_of(html, "showing") == "Showing images 1\u201312 of 24 (pairs 1\u20136 of 12)"
    source = image_query(PAIRS, pair_runs.big, "generate", 3)
    assert f'edited from <a href="ti?{source}">generate[3]</a>' in unescape(html)
    more = f'<a href="{one_run(pair_runs.big, 2).removeprefix("/mai/")}" rel="next">more of this run'
    assert more in unescape(html)
    # Page 2 of the run: the rest, and the way back.
    second = api.get(one_run(pair_runs.big, 2), headers=viewer)
    assert second.status_code == 200
    page = _Page(run_section(second.text, pair_runs.big))
    assert page.chains == [[f"generate[{i}]", f"edit[{i}]"] for i in range(6, 12)]
    assert text_of(second.text, "showing") == "Showing images 13\u201324 of 24 (pairs 7\u201312 of 12)"
    assert one_run(pair_runs.big, 1).removeprefix("/mai/") in page.links
    assert "more of this run" not in second.text and "&larr;" not in second.text
    # The run's tab: all 24 on one page, the same counts.
    tab = api.get(route("run", pair_runs.big, dag_id=PAIRS), headers=viewer).text
    assert _Page(tab).chains == [[f"generate[{i}]", f"edit[{i}]"] for i in range(12)]
    assert text_of(tab, "showing") == "Showing images 1\u201324 of 24 (pairs 1\u201312 of 12)"
    assert text_of(tab, "when counts") == "24 images (12 generated, 12 edited) in 12 pairs"
    # An edit's own tab finds its source by the same pairing.
    edit_tab = api.get(route("ti", pair_runs.big, "edit", 7, dag_id=PAIRS), headers=viewer).text
    assert "edited from" in edit_tab and 'data-task="generate[7]"' in edit_tab


def test_an_edit_whose_source_is_not_in_the_run_shows_alone_and_is_counted(api, tokens, pair_runs):
    viewer = as_user(tokens, "viewer")
    html = run_section(api.get(f"/mai/gallery?dag_id={PAIRS}", headers=viewer).text, pair_runs.small)
    chains = [*([f"generate[{i}]", f"edit[{i}]"] for i in range(3)), ["retouch[0]"]]
    assert _Page(html).chains == chains
    assert text_of(html, "when counts") == "7 images (3 generated, 4 edited) in 4 pairs and single images"
    assert text_of(html, "showing") == "Showing images 1\u20137 of 7 (pairs and single images 1\u20134 of 4)"
    assert "more of this run" not in html
    assert _Page(api.get(one_run(pair_runs.small), headers=viewer).text).chains == chains


def test_a_gallery_page_reads_the_values_of_what_it_shows_in_one_query(api, tokens, pair_runs):
    from airflow.settings import engine
    from sqlalchemy import event

    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    viewer = as_user(tokens, "viewer")
    counts = {}
    event.listen(engine, "before_cursor_execute", record)
    try:
        for run_id in (pair_runs.big, pair_runs.small):
            api.get(one_run(run_id), headers=viewer)  # once first: the gallery's DAG list cached
            del statements[:]
            assert api.get(one_run(run_id), headers=viewer).status_code == 200
            counts[run_id] = len(statements)
            # The values are read once, for the page's images only, without their inline image.
            (values,) = [s for s in statements if "json_remove" in s.lower()]
            keys = len(re.findall(r"\(\?, \?, \?\)", values))  # (dag_run_id, task_id, map_index)
            assert keys == (12 if run_id == pair_runs.big else 7), values
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert counts[pair_runs.big] == counts[pair_runs.small]  # not one query per image


def test_paging_parameters_out_of_range_are_clear_4xx(api, tokens, pair_runs):
    viewer = as_user(tokens, "viewer")
    cases = {
        f"/mai/gallery?run_id={pair_runs.big}": (400, "run_id needs dag_id"),
        one_run(pair_runs.big) + "&since=2026-01-01": (400, "leave them out with run_id"),
        one_run(pair_runs.big, 3): (404, "has 2 pages of images (12 images a page): there is no page 3"),
        one_run(pair_runs.small, 2, "run"): (404, "has 1 page of images (500 images a page)"),
        one_run(pair_runs.big) + "&page=0": (400, "page"),
        one_run(pair_runs.big) + "&page=100001": (400, "page"),
        one_run("x" * 251): (400, "run_id"),
        one_run("no-such-run"): (404, f"DAG {PAIRS} has no run no-such-run"),
    }
    for path, (status, message) in cases.items():
        answer = api.get(path, headers=viewer)
        assert (answer.status_code, message in answer.text) == (status, True), (path, answer.text[-500:])


# -- images and thumbnails -------------------------------------------------------------------------
def test_full_image_is_the_recorded_png_with_caching_headers(api, tokens, ui_run):
    viewer = as_user(tokens, "viewer")
    edited = ui_run.xcoms[("edit", -1)]
    answer = api.get(route("image", ui_run.run_id), headers=viewer)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert hashlib.sha256(answer.content).hexdigest() == edited["sha256"]
    assert answer.headers["etag"] == f'"{edited["sha256"]}"'
    again = api.get(
        route("image", ui_run.run_id), headers={**viewer, "If-None-Match": answer.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    download = api.get(route("image", ui_run.run_id) + "&download=1", headers=viewer)
    assert download.headers["content-disposition"] == f'attachment; filename="{Path(edited["uri"]).name}"'


def test_an_image_kept_in_xcom_is_served_from_its_base64(api, tokens, ui_run):
    viewer = as_user(tokens, "viewer")
    inline = ui_run.xcoms[("inline", -1)]
    assert inline["uri"] is None and inline["b64_json"]
    answer = api.get(route("image", ui_run.run_id, "inline"), headers=viewer)
    assert hashlib.sha256(answer.content).hexdigest() == inline["sha256"]
    thumb = api.get(route("thumb", ui_run.run_id, "inline"), headers=viewer)
    assert thumb.status_code == 200 and image_size(thumb.content) == (320, 320)
    no_sidecar = api.get(route("sidecar", ui_run.run_id, "inline"), headers=viewer)
    assert no_sidecar.status_code == 404 and "kept its image in XCom" in no_sidecar.json()["detail"]


def test_thumbnails_are_small_jpegs_cached_by_sha256(api, tokens, ui_run):
    from airflow_provider_mai.plugin.app import thumbnail_cache
    from airflow_provider_mai.plugin.thumbnails import MAX_THUMBNAIL_BYTES

    viewer = as_user(tokens, "viewer")
    generated = ui_run.xcoms[("generate", 0)]
    png = Path(generated["uri"].removeprefix("file://"))
    sizes = {}
    for size in (320, 160):
        answer = api.get(route("thumb", ui_run.run_id, "generate", 0) + f"&size={size}", headers=viewer)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert answer.content[:3] == b"\xff\xd8\xff"
        assert len(answer.content) <= MAX_THUMBNAIL_BYTES
        assert image_size(answer.content) == (size, size * 768 // 1024)
        assert answer.headers["cache-control"] == "private, no-cache"  # no content tag: revalidate
        sizes[size] = len(answer.content)
    tagged = api.get(
        route("thumb", ui_run.run_id, "generate", 0) + f"&v={generated['sha256'][:16]}", headers=viewer
    )
    assert "immutable" in tagged.headers["cache-control"]  # this URL names this very image for good
    assert png.stat().st_size > 25 * sizes[320]  # ~1.6 MB PNG -> a few tens of KB at most
    # Cached by location and sha256, looked up only after this result's own read succeeded...
    original = png.read_bytes()
    cache = thumbnail_cache()
    hits = cache.hits
    answer = api.get(route("thumb", ui_run.run_id, "generate", 0), headers=viewer)
    assert answer.status_code == 200 and cache.hits == hits + 1
    png.unlink()
    try:
        # ... so a file that is gone gets no thumbnail from the cache (nor would a forged result
        # naming this image's sha256 and a missing file).
        cached_gone = api.get(route("thumb", ui_run.run_id, "generate", 0), headers=viewer)
        assert cached_gone.status_code == 404 and cached_gone.headers["x-content-type-options"] == "nosniff"
        gone = api.get(route("image", ui_run.run_id, "generate", 0), headers=viewer)
        assert gone.status_code == 404 and "no longer at" in gone.json()["detail"]
        # ... and never served stale: a different image at that location is refused for this run.
        png.write_bytes(original[:-64] + bytes(64))
        changed = api.get(route("image", ui_run.run_id, "generate", 0), headers=viewer)
        assert changed.status_code == 409 and "changed since this task ran" in changed.json()["detail"]
    finally:
        png.write_bytes(original)
    assert cache.size_bytes <= cache.max_bytes


def test_one_decode_makes_every_thumbnail_size_and_a_decode_over_budget_never_repeats(
    api, tokens, ui_run, monkeypatch
):
    from functools import partial

    import airflow_provider_mai.plugin.app as app
    from airflow_provider_mai.plugin.thumbnails import ThumbnailCache, make_thumbnails

    viewer = as_user(tokens, "viewer")
    decodes: list[float] = []

    def counted(png: bytes, *, cpu_seconds: float = 2.0) -> dict[int, bytes]:
        decodes.append(cpu_seconds)
        return make_thumbnails(png, cpu_seconds=cpu_seconds)

    fresh = ThumbnailCache(1 << 20)
    monkeypatch.setattr(app, "thumbnail_cache", lambda: fresh)
    monkeypatch.setattr(app, "make_thumbnails", counted)
    for size in (320, 160, 320):
        answer = api.get(route("thumb", ui_run.run_id, "generate", 1) + f"&size={size}", headers=viewer)
        assert answer.status_code == 200 and max(image_size(answer.content)) == size
    assert len(decodes) == 1  # both sizes from one decode
    # A decode that runs past its CPU budget (here: none at all) fails, and is never tried again.
    monkeypatch.setattr(app, "make_thumbnails", partial(counted, cpu_seconds=0.0))
    for size in (320, 160, 320):
        answer = api.get(route("thumb", ui_run.run_id, "generate", 0) + f"&size={size}", headers=viewer)
        assert answer.status_code == 502 and "s of CPU time" in answer.json()["detail"], size
    assert decodes == [2.0, 0.0]


def test_sidecar_route_returns_the_json_beside_the_png(api, tokens, ui_run):
    answer = api.get(route("sidecar", ui_run.run_id), headers=as_user(tokens, "viewer"))
    assert answer.status_code == 200
    sidecar = answer.json()
    assert sidecar["sha256"] == ui_run.xcoms[("edit", -1)]["sha256"]
    assert sidecar["source_image"] == ui_run.xcoms[("generate", 1)]["uri"]
    assert sidecar["ai_generated"] is True


@pytest.mark.parametrize("store", ["s3_bucket", "azure_container"])
def test_images_in_object_stores_are_read_with_the_api_servers_connections(
    request, api, tokens, emulator, store
):
    base = request.getfixturevalue(store)  # also defines the store's Airflow connection
    run = run_ui_dag(emulator, f"{base}/ui")
    viewer = as_user(tokens, "viewer")
    edited = run.xcoms[("edit", -1)]
    assert edited["uri"].startswith(base.split("@")[0])
    image = api.get(route("image", run.run_id), headers=viewer)
    assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == edited["sha256"]
    thumb = api.get(route("thumb", run.run_id, "generate", 1), headers=viewer)
    assert thumb.status_code == 200 and image_size(thumb.content) == (320, 240)
    sidecar = api.get(route("sidecar", run.run_id), headers=viewer).json()
    assert sidecar["source_image"] == run.xcoms[("generate", 1)]["uri"]
    page = api.get(route("run", run.run_id), headers=viewer).text
    assert ["generate[1]", "edit"] in _Page(page).chains  # pairing read from the store's sidecar


# -- what any task can push: forged results --------------------------------------------------------
HOSTILE = "mai_test_ui_hostile"


SECRET = "s3cr3t-of-the-api-server"


#: XCom-only images in the hostile run, and the base64 each carries (as a real one's 2-4 MB would).
INLINE_IMAGES, INLINE_BYTES = 30, 1_000_000


@pytest.fixture(scope="module")
def hostile_run(airflow_db, tmp_path_factory) -> SimpleNamespace:
    """A run whose tasks push the MAI link with results of their own making (any task can): forged
    sidecar locations, files that are not PNGs, values of the wrong type, and many large images kept
    in XCom."""
    import base64

    folder = tmp_path_factory.mktemp("hostile")
    (folder / "secrets.json").write_text(json.dumps({"client_secret": SECRET}))
    (folder / "ok").mkdir()
    png = make_png(64, 48)
    (folder / "ok" / "pic.png").write_bytes(png)
    other = make_png(64, 48, (200, 0, 0))
    (folder / "other.png").write_bytes(other)
    # A sidecar beside other.png that describes another image (pic.png), with a secret in it.
    (folder / "other.json").write_text(json.dumps({"sha256": sha(png), "client_secret": SECRET}))
    small = make_png(32, 32)
    inline = base64.b64encode(small).decode()
    results = [
        # 0: a real PNG, and a sidecar location of the task's choosing.
        {
            "uri": str(folder / "ok" / "pic.png"),
            "sha256": sha(png),
            "sidecar_uri": str(folder / "secrets.json"),
        },
        # 1: a made-up PNG whose sidecar would be secrets.json.
        {"uri": str(folder / "secrets.png"), "sha256": "0" * 64, "prompt": "beside the secrets"},
        # 2: not a PNG at all.
        {"uri": str(folder / "secrets.json"), "sha256": "0" * 64, "prompt": "the secrets themselves"},
        # 3: a real PNG with another image's sidecar beside it.
        {"uri": str(folder / "other.png"), "sha256": sha(other), "prompt": "another image's sidecar"},
        # 4: fields of the wrong types.
        {
            "b64_json": inline,
            "sha256": sha(small),
            "width": "wide",
            "height": 0,
            "size_bytes": "lots",
            "prompt": {"nested": ["x"]},
            "reused": "no",
        },
        # 5: a sha256 that would write markdown and HTML of its own.
        {"b64_json": inline, "sha256": "x)](javascript:alert(1))<b>" + "0" * 40, "prompt": "bad sha"},
        # 6: a prompt too long to list (the service takes 128,000 characters).
        {"b64_json": inline, "sha256": sha(small), "prompt": "a very long prompt " * 2_500},
    ]
    conf = {"results": results, "inline_images": INLINE_IMAGES, "inline_bytes": INLINE_BYTES}
    run, states, xcoms = run_dag(HOSTILE, conf)
    assert set(states.values()) == {"success"}, states
    return SimpleNamespace(run_id=run.run_id, xcoms=xcoms, folder=folder, results=results)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hostile(name: str, run: SimpleNamespace, task_id: str = "forge", map_index: int | str = -1) -> str:
    return route(name, run.run_id, task_id, map_index, dag_id=getattr(run, "dag_id", HOSTILE))


def test_a_sidecar_is_read_only_beside_the_png_and_only_when_it_describes_that_image(
    api, tokens, hostile_run
):
    viewer = as_user(tokens, "viewer")
    answers = {
        index: api.get(hostile("sidecar", hostile_run, "forge", index), headers=viewer) for index in range(4)
    }
    # The XCom's sidecar_uri is not read: pic.png has no sidecar beside it, so it is not shown.
    assert answers[0].status_code == 404 and "there is no sidecar at" in answers[0].json()["detail"]
    no_sidecar = api.get(hostile("image", hostile_run, "forge", 0), headers=viewer)
    assert no_sidecar.status_code == 404 and "not shown without it" in no_sidecar.json()["detail"]
    # A sidecar whose sha256 is not the image's is refused, its content not shown.
    assert answers[1].status_code == 409 and "does not describe this image" in answers[1].json()["detail"]
    assert answers[3].status_code == 409 and "does not describe this image" in answers[3].json()["detail"]
    # A location that is not a PNG is not opened at all.
    assert answers[2].status_code == 404
    assert api.get(hostile("image", hostile_run, "forge", 2), headers=viewer).status_code == 404
    pages = [hostile("ti", hostile_run, "forge", index) for index in range(4)]
    pages += [hostile("run", hostile_run), f"/mai/gallery?dag_id={HOSTILE}"]
    for path in pages:
        answer = api.get(path, headers=viewer)
        assert answer.status_code == 200, path
        assert SECRET not in answer.text and "client_secret" not in answer.text, path
    for answer in answers.values():
        assert SECRET not in answer.text and "client_secret" not in answer.text
    tab = api.get(hostile("ti", hostile_run, "forge", 3), headers=viewer).text
    assert "does not describe this image" in tab


def test_results_of_the_wrong_shape_are_shown_plainly_or_not_at_all(api, tokens, hostile_run):
    viewer = as_user(tokens, "viewer")
    for path in (hostile("run", hostile_run), f"/mai/gallery?dag_id={HOSTILE}"):
        answer = api.get(path, headers=viewer)
        assert answer.status_code == 200, (path, answer.text[-2000:])
        assert "javascript:" not in answer.text and "<b>" not in answer.text
    cards = _Page(api.get(hostile("run", hostile_run), headers=viewer).text).cards
    forged = sorted(card for card in cards if card.startswith("forge"))
    # Not the .json, not the bad sha256; the long prompt's result listed without its details.
    assert forged == ["forge[0]", "forge[1]", "forge[3]", "forge[4]", "forge[6]"]
    assert len(cards) == len(forged) + INLINE_IMAGES
    tab = api.get(hostile("ti", hostile_run, "forge", 4), headers=viewer)
    assert tab.status_code == 200 and "wide" not in tab.text
    run_page = api.get(hostile("run", hostile_run), headers=viewer).text
    assert 'data-task="forge[6]" data-unlisted="true"' in run_page and "a very long prompt" not in run_page
    assert "its result is too large to show here (47," in run_page
    long_tab = api.get(hostile("ti", hostile_run, "forge", 6), headers=viewer).text
    assert long_tab.count("a very long prompt") == 2 * 2_500  # its own tab shows it (and its alt text)
    for name in ("image", "thumb", "sidecar"):
        assert api.get(hostile(name, hostile_run, "forge", 5), headers=viewer).status_code == 404, name


# -- a result in a DAG the reader may read, naming another DAG's image ------------------------------
#: The DAG of the forged results (``outsider`` may read it, not ``mai_test_ui``).
FORGER = "mai_test_ui_forger"
#: Spellings of one local PNG's location that all read the same file (and one that reads none).
SPELLINGS = ("plain", "file:///", "file://localhost/", "/a/../b", "double slash")


def spelled(uri: str, spelling: str) -> str:
    path = Path(uri.removeprefix("file://"))
    return {
        "plain": str(path),
        "file:///": f"file://{path}",
        "file://localhost/": f"file://localhost{path}",
        "/a/../b": f"{path.parent}/../{path.parent.name}/{path.name}",
        "double slash": "/" + str(path).replace("/", "//"),
    }[spelling]


@pytest.fixture(scope="module")
def cross_dag_run(airflow_db, ui_run, tmp_path_factory) -> SimpleNamespace:
    """A run of ``FORGER`` (which ``outsider`` may read) whose results name the ``edit`` image
    of ``mai_test_ui`` (which ``outsider`` may not read) with its sha256, in every spelling; then a
    missing file with that sha256; then copies of it elsewhere, beside a sidecar of the old kind
    (no location, no DAG) and beside a copy of its own sidecar (which records where it was written)."""
    victim = ui_run.xcoms[("edit", -1)]
    results = [
        {"uri": spelled(victim["uri"], spelling), "sha256": victim["sha256"]} for spelling in SPELLINGS
    ]
    results.append({"uri": str(ui_run.out / "edit" / "missing.png"), "sha256": victim["sha256"]})
    copies = tmp_path_factory.mktemp("copies")
    original = Path(victim["uri"].removeprefix("file://"))
    for name, sidecar in (
        ("old", {"sha256": victim["sha256"], "prompt": "an old sidecar"}),
        ("moved", json.loads(original.with_suffix(".json").read_text())),
    ):
        (copies / f"{name}.png").write_bytes(original.read_bytes())
        (copies / f"{name}.json").write_text(json.dumps(sidecar))
        results.append({"uri": str(copies / f"{name}.png"), "sha256": victim["sha256"]})
    run, states, _xcoms = run_dag(FORGER, {"results": results, "inline_images": 0})
    assert {state for (task, _), state in states.items() if task == "forge"} == {"success"}, states
    png = Path(victim["uri"].removeprefix("file://"))
    return SimpleNamespace(
        dag_id=FORGER, run_id=run.run_id, victim_run_id=ui_run.run_id, victim=victim, png=png
    )


def test_a_forged_result_never_shows_another_dags_image_or_prompt(api, tokens, cross_dag_run):
    outsider, viewer = as_user(tokens, "outsider"), as_user(tokens, "viewer")
    secret_png = cross_dag_run.png.read_bytes()
    victim_prompt = cross_dag_run.victim["prompt"]
    for index, spelling in enumerate(SPELLINGS):
        for name in ("image", "thumb", "sidecar"):
            answer = api.get(hostile(name, cross_dag_run, "forge", index), headers=outsider)
            assert answer.status_code in (403, 404), (spelling, name, answer.status_code)
            assert secret_png not in answer.content and victim_prompt not in answer.text, (spelling, name)
        tab = api.get(hostile("ti", cross_dag_run, "forge", index), headers=outsider)
        assert tab.status_code == 200 and victim_prompt not in tab.text, spelling
        expected = "a DAG you may not read" if spelling != "file://localhost/" else "no longer at"
        image = api.get(hostile("image", cross_dag_run, "forge", index), headers=outsider)
        assert expected in image.json()["detail"], spelling
    # A copy beside a sidecar that names no location and DAG, or another location: not shown.
    old, moved = len(SPELLINGS) + 1, len(SPELLINGS) + 2
    for index, why in ((old, "does not name the location and DAG"), (moved, "written for another location")):
        for user in (outsider, viewer):
            answer = api.get(hostile("image", cross_dag_run, "forge", index), headers=user)
            assert answer.status_code == 409 and why in answer.json()["detail"], index
            assert api.get(hostile("sidecar", cross_dag_run, "forge", index), headers=user).status_code == 409
    # The rule is the writer's DAG, not the spelling: a user who may read both DAGs is shown it.
    for index, spelling in enumerate(SPELLINGS):
        if spelling != "file://localhost/":  # (that spelling names another file: ./localhost/...)
            answer = api.get(hostile("image", cross_dag_run, "forge", index), headers=viewer)
            assert answer.status_code == 200 and answer.content == secret_png, spelling


def test_a_forged_result_gets_no_cached_thumbnail_of_another_dags_image(api, tokens, cross_dag_run):
    from airflow_provider_mai.plugin.app import thumbnail_cache

    viewer, outsider = as_user(tokens, "viewer"), as_user(tokens, "outsider")
    # The victim's own thumbnail, made and cached through its own (authorised) tab.
    own = api.get(route("thumb", cross_dag_run.victim_run_id), headers=viewer)
    assert own.status_code == 200
    cache = thumbnail_cache()
    hits = cache.hits
    missing = len(SPELLINGS)  # the result naming the victim's sha256 and a file that does not exist
    for index in range(missing + 3):
        answer = api.get(hostile("thumb", cross_dag_run, "forge", index), headers=outsider)
        assert answer.status_code in (403, 404, 409) and answer.content != own.content, index
    assert cache.hits == hits  # the cache was never even asked
    gone = api.get(hostile("thumb", cross_dag_run, "forge", missing), headers=viewer)
    assert gone.status_code == 404 and cache.hits == hits  # nor for a reader of both DAGs


def peak_bytes(call: Any) -> tuple[Any, int]:
    """What ``call()`` returns, and the most memory (bytes, Python's allocations) it held at once."""
    import tracemalloc

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def test_a_page_reads_only_the_images_it_shows_and_never_their_base64(api, tokens, hostile_run):
    viewer = as_user(tokens, "viewer")
    stored = INLINE_IMAGES * INLINE_BYTES * 4 // 3
    paths = {
        "one image's tab": hostile("ti", hostile_run, "inline", 7),
        "the mapped task's tab": hostile("ti", hostile_run, "inline", "{MAP_INDEX}"),
        "the run's tab": hostile("run", hostile_run),
        "the gallery": f"/mai/gallery?dag_id={HOSTILE}",
    }
    for what, path in paths.items():
        api.get(path, headers=viewer)  # once first: templates compiled, caches filled
        answer, peak = peak_bytes(lambda path=path: api.get(path, headers=viewer))
        assert answer.status_code == 200, what
        # ~40 MB of base64 in the run's XComs (pages that read whole results held 60 MB): a page
        # holds a few fields of each image it shows, less than one image's base64 in all.
        assert peak < INLINE_BYTES, f"{what}: {peak:,} bytes at once ({stored:,} stored)"
    one = api.get(paths["one image's tab"], headers=viewer).text
    assert "inline image 7" in one and "inline image 8" not in one
    mapped = api.get(paths["the mapped task's tab"], headers=viewer).text
    assert f"{INLINE_IMAGES} mapped task instances with images" in mapped
    # The gallery reads the keys of all 37 marked results, the values of its first 12 only (two of
    # them are not MAI results: not shown).
    gallery = api.get(paths["the gallery"], headers=viewer).text
    assert len(_Page(gallery).cards) == 10
    assert "Showing images 1\u201312 of 37 (single images 1\u201312 of 37)" in gallery
    image = api.get(hostile("image", hostile_run, "inline", 7), headers=viewer)
    assert sha(image.content) == hostile_run.xcoms[("inline", 7)]["sha256"]


# -- the pieces, without a server ------------------------------------------------------------------
def printed_by_python(code: str) -> list[str]:
    """The lines ``code`` prints, run in a fresh Python process (nothing imported yet)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_importing_the_plugin_is_cheap_and_builds_no_app():
    # Airflow imports the plugin in every process that loads plugins (workers too).
    code = (
        "import sys, airflow.sdk;"
        "before = set(sys.modules);"
        "import airflow_provider_mai.plugin as plugin;"
        "views = plugin.MaiImagesPlugin().external_views;"
        "new = set(sys.modules) - before;"
        "print(','.join(m for m in ('fastapi', 'PIL', 'airflow.api_fastapi') if m in new));"
        "print(plugin._app is None, len(views))"
    )
    assert printed_by_python(code)[:2] == ["", "True 3"]


def test_extra_link_opens_the_task_instance_tab_relative_to_the_ui():
    from airflow_provider_mai.links import MaiImageLink
    from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
    from airflow_provider_mai.plugin.trust import LINK_XCOM_KEY

    for operator in (MaiGenerateImageOperator, MaiEditImageOperator):
        assert [link.name for link in operator.operator_extra_links] == ["MAI image"]
    link = MaiImageLink()
    assert link.xcom_key == LINK_XCOM_KEY == "_link_MaiImageLink"
    key = SimpleNamespace(
        dag_id="d 1", run_id="manual__2026-11-29T10:00:00+00:00", task_id="gen", map_index=-1
    )
    assert link.get_link(None, ti_key=key) == (
        "dags/d%201/runs/manual__2026-11-29T10%3A00%3A00%2B00%3A00/tasks/gen/plugin/mai-image"
    )
    key.map_index = 4
    assert link.get_link(None, ti_key=key).endswith("/tasks/gen/mapped/4/plugin/mai-image")


def test_review_markdown_shows_thumbnails_and_cannot_be_hijacked_by_a_prompt():
    from airflow_provider_mai.links import review_markdown

    results = [
        {"prompt": "a mug", "sha256": "ab" * 32},
        {"prompt": "a cup ![x](https://evil.example/t.png) | [y](javascript:1)\nend", "sha256": "cd" * 32},
    ]
    table = review_markdown("d", "r+1", "gen", results, ["One", "Two"])
    rows = table.split("\n")
    assert len(rows) == 4 and rows[0] == "| **One** | **Two** |"
    assert re.findall(r"!\[[^\]]*\]\(([^)]*)\)", table) == [
        "mai/thumb?dag_id=d&run_id=r%2B1&task_id=gen&map_index=0&size=320&v=abababababababab",
        "mai/thumb?dag_id=d&run_id=r%2B1&task_id=gen&map_index=1&size=320&v=cdcdcdcdcdcdcdcd",
    ]
    assert "evil.example" in rows[3] and r"\!\[x\]\(https" in rows[3] and r"\|" in rows[3]
    assert rows[3].count(" | ") == 1  # the prompt's pipe does not open a third column
    with pytest.raises(ValueError, match="one label per image"):
        review_markdown("d", "r", "gen", results, ["One"])
    with pytest.raises(ValueError, match="size must be one of"):
        review_markdown("d", "r", "gen", results, ["One", "Two"], size=1000)


def test_review_markdown_gives_no_thumbnail_to_a_result_that_is_not_a_mai_image():
    from airflow_provider_mai.links import review_markdown, thumbnail_url

    hostile = [
        {"prompt": "ok", "sha256": "ab" * 32},
        {"prompt": "forged", "sha256": "0123456789abcdef)](javascript:alert(1))" + "0" * 24},
        {"prompt": "no sha256"},
        "not even a dict",
        {"prompt": ["a", "list"], "sha256": "AB" * 32},
    ]
    table = review_markdown("d", "r", "gen", hostile, ["A", "B", "C", "D", "E"])
    images, captions = table.split("\n")[2:]
    assert images.count("![") == 1 and images.count("*(no image)*") == 4
    assert "javascript" not in table and images.count(" | ") == 4 and captions.count(" | ") == 4
    assert "tasks/gen/mapped/3/plugin/mai-image" in captions  # each column still links to its tab
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        thumbnail_url("d", "r", "gen", sha256="x)](javascript:alert(1))")


def test_only_locations_we_write_are_opened_whatever_their_spelling():
    from airflow_provider_mai.plugin.trust import png_uri

    for refused in (
        " http://127.0.0.2/x.png",
        "http://127.0.0.2/x.png ",
        "HTTPS://h/x.png",
        "\thttp://h/x.png",
        "ftp://h/x.png",
        "data:x.png",
        "/x\n.png",
        "memory://x.png",
    ):
        assert png_uri(refused) is None, refused
    for kept in ("/data/x.png", "file:///data/x.png", "s3://aws_default@b/x.PNG", "abfs://c/x.png"):
        assert png_uri(kept) == kept


def test_map_index_reads_the_unfilled_placeholder_as_unmapped():
    from fastapi import HTTPException

    from airflow_provider_mai.plugin.app import parse_map_index

    assert [parse_map_index(value) for value in ("{MAP_INDEX}", None, "", "-1", "7")] == [-1, -1, -1, -1, 7]
    for bad in ("{DAG_ID}x", "seven", "-2", "1.5"):
        with pytest.raises(HTTPException) as refused:
            parse_map_index(bad)
        assert refused.value.status_code == 400


def test_thumbnails_stay_small_even_for_noise_and_transparency():
    import os as _os

    from PIL import Image

    from airflow_provider_mai.plugin.thumbnails import MAX_THUMBNAIL_BYTES, make_thumbnails

    noise = Image.frombytes("RGB", (1024, 1024), _os.urandom(1024 * 1024 * 3))  # the worst case for JPEG
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    jpeg = make_thumbnails(buffer.getvalue(), [320])[320]
    assert len(jpeg) <= MAX_THUMBNAIL_BYTES and max(image_size(jpeg)) <= 320
    clear = io.BytesIO()
    Image.new("RGBA", (900, 600), (255, 0, 0, 0)).save(clear, "PNG")
    flat = Image.open(io.BytesIO(make_thumbnails(clear.getvalue(), [160])[160]))
    assert flat.size == (160, 107) and flat.getpixel((5, 5)) == pytest.approx((255, 255, 255), abs=3)
    with pytest.raises(ValueError, match="not a readable image"):
        make_thumbnails(b"not an image")


def test_thumbnails_decode_only_png_and_jpeg_of_a_mai_size(tmp_path):
    from PIL import Image

    from airflow_provider_mai.plugin.thumbnails import MAX_SOURCE_PIXELS

    for fmt in ("EPS", "GIF", "TIFF", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (10, 120, 200)).save(buffer, fmt)
        (tmp_path / f"image.{fmt.lower()}").write_bytes(buffer.getvalue())
    # In a fresh process: Pillow never even loads the EPS reader (which would run Ghostscript).
    code = (
        "import pathlib, sys\n"
        "from airflow_provider_mai.plugin.thumbnails import make_thumbnails\n"
        f"for path in sorted(pathlib.Path({str(tmp_path)!r}).iterdir()):\n"
        "    try:\n"
        "        make_thumbnails(path.read_bytes())\n"
        "        print(path.suffix, 'made')\n"
        "    except ValueError as exc:\n"
        "        print(path.suffix, 'refused:', exc)\n"
        "print('EPS reader loaded:', 'PIL.EpsImagePlugin' in sys.modules)\n"
    )
    assert printed_by_python(code) == [
        *(
            f"{suffix} refused: not a readable image: only PNG is decoded (not a PNG image)"
            for suffix in (".bmp", ".eps", ".gif", ".tiff")
        ),
        "EPS reader loaded: False",
    ]
    side = int(MAX_SOURCE_PIXELS**0.5) + 1  # just over the bound: refused before it is decoded
    big = io.BytesIO()
    Image.new("L", (side, side)).save(big, "PNG")
    from airflow_provider_mai.plugin.thumbnails import make_thumbnails

    with pytest.raises(ValueError, match=f"{side}x{side}: more than 4,000,000 pixels"):
        make_thumbnails(big.getvalue())


def test_thumbnails_refuse_a_jpeg_named_png_and_a_chunk_bomb_without_decoding():
    from airflow_provider_mai.plugin.thumbnails import make_thumbnails
    from tests.support.helpers import chunk_bomb_png, make_jpeg

    with pytest.raises(ValueError, match="only PNG is decoded"):
        make_thumbnails(make_jpeg())  # e.g. a progressive JPEG of 20,000 scans, named .png
    with pytest.raises(ValueError, match="more than 4,096 chunks"):
        make_thumbnails(chunk_bomb_png())


def test_a_decode_stops_at_its_cpu_budget():
    from PIL import Image

    from airflow_provider_mai.plugin.thumbnails import make_thumbnails

    noise = io.BytesIO()
    Image.frombytes("RGB", (1024, 1024), bytes(range(256)) * 12_288).save(noise, "PNG")
    with pytest.raises(ValueError, match="more than 0 s of CPU time"):
        make_thumbnails(noise.getvalue(), cpu_seconds=0.0)
    assert sorted(make_thumbnails(noise.getvalue())) == [160, 320]


def test_thumbnail_cache_remembers_failed_decodes_boundedly():
    from airflow_provider_mai.plugin.thumbnails import MAX_REMEMBERED_FAILURES, ThumbnailCache

    cache = ThumbnailCache(max_bytes=100)
    assert cache.failure("a" * 64) is None
    for number in range(MAX_REMEMBERED_FAILURES + 1):
        cache.fail(f"{number:064x}", "not a PNG")
    assert cache.failure(f"{0:064x}") is None and cache.failure(f"{1:064x}") == "not a PNG"


def test_thumbnails_are_made_a_bounded_number_at_a_time():
    from airflow_provider_mai.plugin import thumbnails

    png = make_png(64, 48)
    taken = [thumbnails._decodes.acquire(timeout=1) for _ in range(thumbnails.MAX_CONCURRENT_DECODES)]
    try:
        assert all(taken)
        with pytest.raises(thumbnails.ThumbnailsBusyError, match="try again shortly"):
            thumbnails.make_thumbnails(png, wait=0.05)
    finally:
        for _ in taken:
            thumbnails._decodes.release()
    assert thumbnails.make_thumbnails(png)[160][:3] == b"\xff\xd8\xff"  # every slot given back


def test_thumbnail_cache_keeps_within_its_byte_bound():
    from airflow_provider_mai.plugin.thumbnails import ThumbnailCache

    cache = ThumbnailCache(max_bytes=100)
    for number in range(5):
        cache.put(f"sha{number}", 320, bytes(30))
    assert cache.size_bytes == 90 and len(cache) == 3
    assert cache.get("sha0", 320) is None and cache.get("sha4", 320) == bytes(30)
    cache.get("sha2", 320)  # used: it stays, the least recently used one leaves
    cache.put("sha5", 320, bytes(30))
    assert cache.get("sha3", 320) is None and cache.get("sha2", 320) is not None
    cache.put("huge", 320, bytes(101))  # larger than the whole cache: not kept
    assert cache.get("huge", 320) is None and cache.size_bytes <= 100
