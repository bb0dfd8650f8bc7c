"""The connection form in a real browser: Airflow's api-server on loopback, driven by headless Chromium.

Adds a ``mai`` connection through the UI (checking that the custom fields, labels, placeholders and
password fields render), saves it, presses the list's Test button and checks the answer - which our
hook produced by sending its undersized probe to the emulator. Needs Debian's ``chromium`` and the
``playwright`` package (CI installs both); locally it skips without them, under CI it fails."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.connections import API_KEY
from tests.support.paths import REPO_ROOT
from tests.support.servers import airflow_api_server

pytestmark = pytest.mark.integration


ROOT = REPO_ROOT


SCREENSHOT = ROOT / "docs" / "connection-form.png"


@pytest.fixture(scope="module")
def api_server(airflow_db: Path) -> Iterator[str]:
    """``airflow api-server`` on a free loopback port, connection testing on, everyone an admin."""
    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    }
    with airflow_api_server(env) as url:
        yield url


def _stored_connection(url: str, conn_id: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v2/connections/{conn_id}", timeout=60) as answer:
        return json.load(answer)


def _add_connection(page, url: str, conn_id: str, emulator_port: int, api_key: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(f"{url}/connections", wait_until="networkidle")
    page.get_by_role("button", name="Add Connection").click()
    page.locator("input[name=connection_id]").fill(conn_id)
    page.get_by_role("combobox").first.click()
    page.keyboard.type("Foundry")
    page.get_by_role("option", name="Microsoft Foundry MAI").click()

    # Standard fields: relabelled, with our placeholders; login and schema hidden. (expect() waits
    # for the form to settle: it renders in steps as the connection type's metadata arrives.)
    host = page.locator("input[name=host]")
    expect(host).to_have_attribute("placeholder", "https://<resource-name>.services.ai.azure.com")
    expect(page.get_by_text("Endpoint", exact=True)).to_be_visible()
    expect(page.get_by_text("API key", exact=True)).to_be_visible()
    expect(page.locator("input[name=login]")).to_have_count(0)
    expect(page.locator("input[name=schema]")).to_have_count(0)
    expect(page.locator("input[name=password]")).to_have_attribute("type", "password")
    host.fill("http://127.0.0.1")
    page.locator("input[name=port]").fill(str(emulator_port))
    page.locator("input[name=password]").fill(api_key)

    # Our extra fields, declared in the provider info.
    page.get_by_role("button", name="Extra Fields", exact=True).click()
    for label in ("Deployment", "Auth type", "Tenant ID", "Client ID", "Client secret", "Timeout (s)"):
        expect(page.get_by_text(label, exact=True).first).to_be_visible()
    expect(page.locator("input[name=element_client_secret]")).to_have_attribute("type", "password")
    page.locator("input[name=element_deployment]").fill("mai-image-2-5")
    if os.environ.get("MAI_UPDATE_SCREENSHOT") and api_key == API_KEY:
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.get_by_role("button", name="Save").click()
    page.get_by_role("cell", name=conn_id).wait_for(timeout=60_000)


def _press_test(page, conn_id: str) -> dict:  # type: ignore[no-untyped-def]
    row = page.get_by_role("row").filter(has_text=conn_id)
    with page.expect_response(
        lambda r: r.url.endswith("/api/v2/connections/test"), timeout=120_000
    ) as answer:
        row.get_by_role("button", name="Test Connection").click()
    return answer.value.json()


def test_form_renders_our_fields_and_test_reaches_the_emulator(browser, api_server, emulator):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    try:
        port = int(emulator.url.rsplit(":", 1)[1])
        _add_connection(page, api_server, "mai_ui_good", port, API_KEY)
        stored = _stored_connection(api_server, "mai_ui_good")
        assert stored["conn_type"] == "mai"
        assert json.loads(stored["extra"])["deployment"] == "mai-image-2-5"
        assert stored["password"] != API_KEY  # the API masks it

        verdict = _press_test(page, "mai_ui_good")
        assert verdict["status"] is True, verdict
        assert "deployment 'mai-image-2-5' found" in verdict["message"]
        page.get_by_text("Test Connection Successful").wait_for(timeout=60_000)
        page.get_by_text("credentials accepted, deployment 'mai-image-2-5' found").wait_for(timeout=30_000)
        # The Test button ran our hook: its 16x16 probe reached the emulator, and no image was made.
        (probe,) = emulator.requests
        assert (probe.fields["width"], probe.fields["height"]) == (16, 16)
        assert probe.status == 400
        if os.environ.get("MAI_UPDATE_SCREENSHOT"):
            page.screenshot(path=str(SCREENSHOT.with_name("connection-test.png")))

        _add_connection(page, api_server, "mai_ui_bad_key", port, "not-the-key")
        verdict = _press_test(page, "mai_ui_bad_key")
        assert verdict["status"] is False
        assert "401" in verdict["message"] and "not-the-key" not in verdict["message"]
        page.get_by_text("Test Connection Failed").wait_for(timeout=60_000)
    finally:
        context.close()
