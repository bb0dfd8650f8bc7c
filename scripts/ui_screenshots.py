"""Screenshots of the MAI pages in Airflow's UI, from a headless browser - a check a team can run in CI.

    AIRFLOW_UI_PASSWORD=... python scripts/ui_screenshots.py --url http://127.0.0.1:8080 \\
        --user admin --out screenshots/ [--dag-id DAG --run-id RUN] [--login form|token]

It signs in to Airflow 3's api-server, opens the gallery (Browse -> MAI images) and, with
``--dag-id``/``--run-id``, that run's "MAI images" tab and its first gallery page, waits until
every thumbnail has loaded, and writes one PNG per page. It exits 1 when a page does not answer
200 or a thumbnail fails to load, so a broken deployment (no Pillow, no storage connection on the
api-server, a missing permission) fails the job. The password is read from the environment, never
from the command line (where ``ps`` would show it).

Signing in: ``--login form`` (the default) fills the UI's login form (``input[name=username]``,
``input[name=password]``, the "Sign in" button: the simple auth manager's); ``--login token``
asks ``POST /auth/token`` for a token and hands it to the browser as the UI's ``_token`` cookie,
which works with any auth manager that serves that endpoint.

Needs ``pip install playwright`` and a Chromium: ``--chromium PATH`` (default ``$CHROMIUM_PATH``,
then ``chromium`` on the PATH, then Playwright's own download, ``playwright install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

#: Flags for a CI container: no GPU, no sandbox as root, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long a page, a login or the images of a page may take (milliseconds).
TIMEOUT_MS = 90_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the Airflow UI's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--user", required=True, help="the user to sign in as (password: $AIRFLOW_UI_PASSWORD)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the folder the PNGs are written to")
    parser.add_argument("--dag-id", help="with --run-id: also that run's pages")
    parser.add_argument("--run-id")
    parser.add_argument("--login", choices=("form", "token"), default="form")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM_PATH") or shutil.which("chromium"))
    args = parser.parse_args(argv)
    password = os.environ.get("AIRFLOW_UI_PASSWORD")
    if not password:
        parser.error("set AIRFLOW_UI_PASSWORD to the user's password")
    if bool(args.dag_id) != bool(args.run_id):
        parser.error("--dag-id and --run-id go together")
    url = args.url.rstrip("/")
    pages = {"gallery": f"{url}/plugin/mai-images"}
    if args.dag_id:
        dag, run = quote(args.dag_id, safe=""), quote(args.run_id, safe="")
        pages["run-tab"] = f"{url}/dags/{dag}/runs/{run}/plugin/mai-run-images"
        # The plugin's own page (no UI around it): the whole run's first page, full length.
        pages["run-gallery"] = (
            f"{url}/mai/gallery?{urlencode({'dag_id': args.dag_id, 'run_id': args.run_id})}"
        )
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium or None, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            if args.login == "form":
                sign_in_with_form(page, url, args.user, password)
            else:
                token = access_token(url, args.user, password)
                context.add_cookies([{"name": "_token", "value": token, "url": f"{url}/"}])
            for name, address in pages.items():
                problems += screenshot(page, address, args.out / f"{name}.png")
        finally:
            browser.close()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def sign_in_with_form(page: Any, url: str, user: str, password: str) -> None:
    """Sign in through the UI's login form, as a person would."""
    page.goto(f"{url}/", wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda current: "/login" not in current, timeout=TIMEOUT_MS)


def access_token(url: str, user: str, password: str) -> str:
    """A token from the api-server's ``POST /auth/token`` (the REST API's way in)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise SystemExit(f"--url must be http(s): {url}")
    body = json.dumps({"username": user, "password": password}).encode()
    request = urllib.request.Request(
        f"{url}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(json.load(answer)["access_token"])


def screenshot(page: Any, address: str, path: Path) -> list[str]:
    """Open ``address``, wait for its images (inside the UI's iframe when there is one), write
    ``path``; what went wrong, if anything."""
    answer = page.goto(address, wait_until="networkidle", timeout=TIMEOUT_MS)
    if answer is None or answer.status != 200:
        return [f"{address}: answered {answer.status if answer else 'nothing'}"]
    in_ui = "/plugin/" in address
    frame = page.frame_locator("iframe").first if in_ui else page
    frame.locator("body").wait_for(timeout=TIMEOUT_MS)
    frame.locator("section, .notice").first.wait_for(timeout=TIMEOUT_MS)  # the plugin's page is in
    broken = []
    refused = frame.locator("[data-status]")  # the plugin's error page (in the UI's iframe: the UI said 200)
    if refused.count():
        broken.append(f"{address}: {refused.first.get_attribute('data-status')} {refused.first.inner_text()}")
    images = frame.locator("img")
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed(timeout=TIMEOUT_MS)
        image.evaluate("img => img.complete || new Promise(done => img.onload = img.onerror = done)")
        if image.evaluate("img => img.naturalWidth") == 0:
            broken.append(f"{address}: image {image.get_attribute('src')} did not load")
    frame.locator("body").evaluate("body => window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=not in_ui)
    print(f"{path} ({images.count()} images)")
    return broken


if __name__ == "__main__":
    sys.exit(main())
