"""The UI plugin in a whole Airflow on loopback - api-server, scheduler, DAG processor - with the
example DAGs run by the scheduler against the emulator.

The human review (``mai_review_then_edit``) is answered twice through the REST API (a pick, a
rejection) and once in headless Chromium, where the gallery, the task instance tab, the extra link
and a refused viewer are checked too. The browser tests need Debian's ``chromium`` and the
``playwright`` package (CI installs both); ``MAI_UPDATE_SCREENSHOT=1`` rewrites the screenshots in
``docs/``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_provider_mai.links import image_query, task_instance_tab_url
from tests.support.airflow_stack import AirflowStack, airflow_stack, wait_until
from tests.support.browser import sign_in
from tests.support.paths import REPO_ROOT
from tests.support.ui_auth import PASSWORDS

pytestmark = pytest.mark.integration


DEMO = "mai_generate_then_edit"


REVIEW = "mai_review_then_edit"


DOCS = REPO_ROOT / "docs"


VARIATIONS = ["Variation 1", "Variation 2", "Variation 3"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[AirflowStack]:
    """Airflow with the plugin; ``outsider`` may read every DAG but the demo one."""
    with airflow_stack(tmp_path_factory.mktemp("stack"), hidden_dags=[DEMO]) as running_stack:
        yield running_stack


@pytest.fixture(scope="module")
def runs(stack) -> dict[str, str]:
    """Every run this module looks at, started at once so that the scheduler runs them side by side."""
    return {
        name: stack.trigger(dag_id, {"output_base": str(stack.output_base / name)})
        # The demo last: the newest run tops the gallery (and its screenshot).
        for name, dag_id in (("pick", REVIEW), ("reject", REVIEW), ("browser", REVIEW), ("demo", DEMO))
    }


def hitl_path(stack: AirflowStack, run_id: str) -> str:
    return f"{stack.run_path(REVIEW, run_id)}/taskInstances/review/-1/hitlDetails"


def awaiting_review(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    """The review request of a run, once it can be answered safely.

    Airflow 3.3.2 fails a Human-in-the-loop task answered before the scheduler has handled the exit
    of the worker that paused it (about 5 s after the pause here): the resumed try is queued first,
    and the old exit then reads as "killed externally". People take longer than that; a script
    answering at once hits it. So the tests answer after the scheduler has logged that exit.
    """

    def pending() -> dict[str, Any] | None:
        status, detail = stack.call("GET", hitl_path(stack, run_id))
        return detail if status == 200 and not detail["response_received"] else None

    detail = wait_until(pending, 150, f"the review of {run_id} to wait for an answer")
    worker_exit = re.compile(
        rf"TaskInstance Finished: dag_id={REVIEW}, task_id=review, run_id={re.escape(run_id)}, "
        r".*state=(awaiting_input|deferred),"
    )
    wait_until(
        lambda: worker_exit.search(stack.scheduler_log.read_text(errors="replace")),
        60,
        f"the scheduler to see the review worker of {run_id} exit",
    )
    return detail


def edited_files(stack: AirflowStack, name: str) -> list[Path]:
    return sorted((stack.output_base / name / "edited").glob("*.png"))


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


# -- the review, through the REST API --------------------------------------------------------------
def test_review_shows_thumbnails_and_only_the_chosen_variation_is_edited(stack, runs):
    run_id = runs["pick"]
    detail = awaiting_review(stack, run_id)
    assert detail["options"] == [*VARIATIONS, "Reject all"]
    thumbnails = re.findall(r"!\[(Variation \d)\]\((mai/thumb\?[^)\s]+)\)", detail["body"])
    assert [label for label, _ in thumbnails] == VARIATIONS
    for index, (_, url) in enumerate(thumbnails):
        assert url.startswith("mai/") and f"map_index={index}" in url  # relative to the UI's base
        status, jpeg = stack.call("GET", f"/{url}", user="viewer")
        assert status == 200 and jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) <= 40 * 1024
        assert stack.call("GET", f"/{url}", user=None)[0] == 401

    path = hitl_path(stack, run_id)
    pick_two = {"chosen_options": ["Variation 2"], "params_input": {}}
    pick_one = {"chosen_options": ["Variation 1"], "params_input": {}}
    assert stack.call("PATCH", path, "viewer", pick_two)[0] == 403  # a viewer may look, not answer
    status, answer = stack.call("PATCH", path, "admin", pick_two)
    assert status == 200 and answer["chosen_options"] == ["Variation 2"]
    assert stack.call("PATCH", path, "admin", pick_one)[0] == 409  # answered once, for good

    assert stack.wait_for_run(REVIEW, run_id) == "success"
    states = stack.task_states(REVIEW, run_id)
    assert states[("edit_2", -1)] == "success" and states[("publish", -1)] == "success"
    assert {states[(task, -1)] for task in ("edit_1", "edit_3", "rejected")} == {"skipped"}
    (edited,) = edited_files(stack, "pick")
    published = stack.xcom(REVIEW, run_id, "publish")
    assert local_path(published["uri"]) == edited
    chosen = stack.xcom(REVIEW, run_id, "generate", map_index=1)
    sidecar = json.loads(edited.with_suffix(".json").read_text())
    assert sidecar["source_image"] == chosen["uri"] and sidecar["operation"] == "edit"


def test_rejecting_every_variation_ends_the_run_with_nothing_edited(stack, runs):
    run_id = runs["reject"]
    awaiting_review(stack, run_id)
    body = {"chosen_options": ["Reject all"], "params_input": {}}
    assert stack.call("PATCH", hitl_path(stack, run_id), "admin", body)[0] == 200
    assert stack.wait_for_run(REVIEW, run_id) == "success"
    states = stack.task_states(REVIEW, run_id)
    assert states[("rejected", -1)] == "success"
    assert {states[(task, -1)] for task in ("edit_1", "edit_2", "edit_3", "publish")} == {"skipped"}
    assert edited_files(stack, "reject") == []
    assert len(list((stack.output_base / "reject" / "candidates").glob("*.png"))) == 3


# -- in the browser --------------------------------------------------------------------------------
@pytest.fixture
def signed_in(browser, stack) -> Iterator[Any]:
    """A fresh browser context; call it with a user name to get a signed-in page."""
    contexts = []

    def page_for(user: str) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        sign_in(page, stack.url, user, PASSWORDS[user])
        return page

    yield page_for
    for context in contexts:
        context.close()


def images_loaded(frame: Any, selector: str = "img") -> list[int]:
    """Wait until every image matched has loaded; their natural widths (0: failed to load)."""
    images = frame.locator(selector)
    images.first.wait_for(timeout=90_000)
    for index in range(images.count()):
        images.nth(index).scroll_into_view_if_needed()
        images.nth(index).evaluate(
            "img => img.complete || new Promise(done => img.onload = img.onerror = done)"
        )
    return [images.nth(index).evaluate("img => img.naturalWidth") for index in range(images.count())]


def screenshot(page: Any, name: str, frame: Any = None) -> None:
    """Rewrite ``docs/NAME`` (a JPEG: the images are photographs) when MAI_UPDATE_SCREENSHOT is set."""
    if os.environ.get("MAI_UPDATE_SCREENSHOT"):
        if frame is not None:  # back to the top of the plugin's page after images_loaded() scrolled
            frame.locator("body").evaluate("body => window.scrollTo(0, 0)")
        page.screenshot(path=str(DOCS / name), type="jpeg", quality=80)


def test_gallery_shows_the_demo_runs_images_as_thumbnails(signed_in, stack, runs):
    assert stack.wait_for_run(DEMO, runs["demo"]) == "success"
    awaiting_review(stack, runs["browser"])  # its three variations are in the gallery too
    page = signed_in("admin")
    transferred: dict[str, int] = {}
    page.on(
        "requestfinished",
        lambda request: transferred.update({request.url: request.sizes()["responseBodySize"]}),
    )
    page.goto(f"{stack.url}/plugin/mai-images", wait_until="networkidle")
    gallery = page.frame_locator("iframe")
    demo = gallery.locator(f'section[data-run="{runs["demo"]}"]')
    chain = demo.locator(".chain").filter(has=page.locator(".arrow"))
    assert [chain.locator("figure").nth(i).get_attribute("data-task") for i in range(2)] == [
        "generate",
        "edit",
    ]
    assert all(width > 0 for width in images_loaded(gallery))
    screenshot(page, "ui-gallery.jpg", gallery)
    thumbs = {url: size for url, size in transferred.items() if "/mai/thumb?" in url}
    assert len(thumbs) >= 5  # the demo's two images and the review run's three
    assert not [url for url in transferred if "/mai/image?" in url]  # no full-size image loaded
    assert max(thumbs.values()) <= 40 * 1024


def test_extra_link_opens_the_task_instance_tab_with_the_image(signed_in, stack, runs):
    assert stack.wait_for_run(DEMO, runs["demo"]) == "success"
    page = signed_in("admin")
    run = quote(runs["demo"], safe="")
    page.goto(f"{stack.url}/dags/{DEMO}/runs/{run}/tasks/edit/details", wait_until="networkidle")
    link = page.locator("a.chakra-button", has_text="MAI image")
    assert link.get_attribute("href") == task_instance_tab_url(DEMO, runs["demo"], "edit")
    link.click()
    page.wait_for_url("**/tasks/edit/plugin/mai-image", timeout=60_000)
    tab = page.frame_locator("iframe")
    (width,) = images_loaded(tab, ".preview img")
    assert width == 1024
    tab.get_by_text("edited from").wait_for()
    assert "This image was generated or edited by an AI model" in tab.locator(".disclosure").inner_text()
    screenshot(page, "ui-task-instance.jpg", tab)


def test_a_viewer_without_access_to_the_dag_is_refused(signed_in, stack, runs):
    assert stack.wait_for_run(DEMO, runs["demo"]) == "success"
    page = signed_in("outsider")
    answer = page.goto(f"{stack.url}/mai/ti?{image_query(DEMO, runs['demo'], 'edit')}")
    assert answer.status == 403
    assert "You do not have permission to see the images of this DAG" in page.inner_text("body")
    thumb = page.request.get(f"{stack.url}/mai/thumb?{image_query(DEMO, runs['demo'], 'generate')}")
    assert thumb.status == 403
    page.goto(f"{stack.url}/plugin/mai-images", wait_until="networkidle")
    gallery = page.frame_locator("iframe")
    gallery.locator(f'section[data-run="{runs["browser"]}"]').wait_for(timeout=90_000)
    assert gallery.locator(f'section[data-run="{runs["demo"]}"]').count() == 0


def test_review_in_the_browser_shows_the_images_and_the_choice_is_edited(signed_in, stack, runs):
    run_id = runs["browser"]
    awaiting_review(stack, run_id)
    page = signed_in("admin")
    page.goto(
        f"{stack.url}/dags/{REVIEW}/runs/{quote(run_id, safe='')}/tasks/review/required_actions",
        wait_until="networkidle",
    )
    widths = images_loaded(page, "img[src^='mai/thumb']")
    assert len(widths) == 3 and all(width == 320 for width in widths)
    screenshot(page, "ui-review.jpg")
    with page.expect_response(
        lambda r: r.url.endswith("/hitlDetails") and r.request.method == "PATCH"
    ) as answer:
        page.get_by_role("button", name="Variation 3").click()
    assert answer.value.status == 200
    assert stack.wait_for_run(REVIEW, run_id) == "success"
    states = stack.task_states(REVIEW, run_id)
    assert [task for task in ("edit_1", "edit_2", "edit_3") if states[(task, -1)] == "success"] == ["edit_3"]
    (edited,) = edited_files(stack, "browser")
    source = json.loads(edited.with_suffix(".json").read_text())["source_image"]
    assert source == stack.xcom(REVIEW, run_id, "generate", map_index=2)["uri"]


def test_the_screenshot_recipe_signs_in_both_ways_and_fails_on_a_broken_page(stack, runs, tmp_path):
    """``scripts/ui_screenshots.py`` as docs/ui.md has a team run it in CI."""
    import subprocess
    import sys

    from tests.support.browser import CHROMIUM
    from tests.support.servers import unavailable

    if not CHROMIUM:
        unavailable("Chromium is not installed (apt-get install chromium)")
    assert stack.wait_for_run(DEMO, runs["demo"]) == "success"

    def recipe(login: str, run_id: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "scripts/ui_screenshots.py", "--url", stack.url, "--user", "admin"]
        command += ["--out", str(tmp_path / login), "--dag-id", DEMO, "--run-id", run_id, "--login", login]
        env = {**os.environ, "AIRFLOW_UI_PASSWORD": PASSWORDS["admin"], "CHROMIUM_PATH": CHROMIUM}
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    for login in ("form", "token"):
        done = recipe(login, runs["demo"])
        assert done.returncode == 0, done.stderr[-3000:]
        shots = sorted((tmp_path / login).iterdir())
        assert [shot.name for shot in shots] == ["gallery.png", "run-gallery.png", "run-tab.png"]
        assert all(shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for shot in shots)
        assert "run-tab.png (2 images)" in done.stdout  # the demo's generation and its edit
    broken = recipe("token", "no-such-run")
    assert broken.returncode == 1
    assert f"DAG {DEMO} has no run no-such-run" in broken.stderr  # the tab's iframe, though the UI said 200
