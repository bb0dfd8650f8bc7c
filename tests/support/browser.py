"""Headless Chromium for the UI tests (a pytest plugin, see ``conftest.py``).

Debian's ``chromium`` driven by Playwright (Playwright's own browser download cannot work here).
Both are installed by CI; locally the browser tests skip without them, under CI they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.servers import unavailable

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
# Flags a sandboxed CI machine needs: no GPU, no sandbox as root, and no calls home (the network
# is closed, and Chromium's background fetches would be refused many at a time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module; each test opens its own context (cookies, pages).

    Not per session: while Playwright's sync API is running, s3fs in the same process finds no AWS
    credentials (seen with the object store tests run after a browser test), so it stops with its module.
    """
    if not CHROMIUM:
        unavailable("Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(page: Any, url: str, username: str, password: str) -> None:
    """Log in to the Airflow UI through the simple auth manager's form."""
    page.goto(f"{url}/", wait_until="domcontentloaded")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda current: "/login" not in current, timeout=90_000)
