"""Headless Chromium for the UI tests (a pytest plugin, see ``conftest.py``).

Debian's ``chromium`` driven by Playwright (Playwright's own browser download cannot work here).
Both are installed by CI; locally the browser tests skip without them, under CI they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.servers import unavailable

# The flags a sandboxed CI machine needs and the UI's sign-in, as the screenshot recipe a team
# runs (scripts/ui_screenshots.py, docs/ui.md) has them: the tests use the recipe's own.
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from ui_screenshots import CHROMIUM_ARGS
from ui_screenshots import sign_in_with_form as sign_in

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "browser", "sign_in"]

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


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
