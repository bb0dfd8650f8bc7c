"""The UI plugin's gallery with 50 images: bytes transferred and time to render, in headless Chromium.

Makes ``--runs`` runs of ``--images`` mapped generations each (1024x1024 PNGs from the emulator,
~1.6 MB each, written to a local folder) with ``airflow dags test`` on a fresh SQLite database,
starts Airflow's api-server with the plugin on loopback, and opens the gallery page (the plugin's
page, as the UI's iframe loads it) in a fresh browser context, scrolled through so that every lazy
thumbnail loads:

- ``cold``: the api-server makes each thumbnail on first request (read PNG, check sha256, resize,
  JPEG);
- ``warm``: the same page again in a new context (nothing in the browser's cache), thumbnails from
  the api-server's memory cache.

Targets (issue 11): a page of 50 images transfers <= 3 MB and loads no full-size image; each
thumbnail <= 40 KB. Needs Debian's chromium and playwright (the test extra).

    python bench/ui_gallery.py [--runs 5 --images 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import ROOT, connection_json, emulator_process  # bench/ is on sys.path

DAG_ID = "mai_bench_gallery"
DAG_FILE = """
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1)):
    MaiGenerateImageOperator.partial(
        task_id="generate", width=1024, height=1024, output_path="{out}/"
    ).expand(prompt=[f"Product shot number {{n}}, studio light" for n in range({images})])
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_gallery(browser, url: str) -> dict:  # type: ignore[no-untyped-def]
    """Open the gallery in a new context; time to the load event and to every thumbnail loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    sizes: dict[str, int] = {}
    page.on(
        "requestfinished", lambda request: sizes.update({request.url: request.sizes()["responseBodySize"]})
    )
    started = time.perf_counter()
    page.goto(f"{url}/mai/gallery", wait_until="load")
    loaded = time.perf_counter() - started
    # Scroll through the page so every lazy thumbnail is requested, then wait for all of them.
    page.evaluate(
        """async () => {
            for (let y = 0; y < document.body.scrollHeight; y += 600) {
                window.scrollTo(0, y);
                await new Promise(done => requestAnimationFrame(done));
            }
            await Promise.all([...document.images].map(img => img.complete ? null :
                new Promise(done => { img.onload = img.onerror = done; })));
        }"""
    )
    everything = time.perf_counter() - started
    widths = page.evaluate("() => [...document.images].map(img => img.naturalWidth)")
    context.close()
    thumbs = [size for address, size in sizes.items() if "/mai/thumb?" in address]
    return {
        "load": loaded,
        "all": everything,
        "images": len(widths),
        "broken": sum(1 for width in widths if not width),
        "thumbs": thumbs,
        "total": sum(sizes.values()),
        "html": sum(size for address, size in sizes.items() if "/mai/gallery" in address),
        "full_size": sum(1 for address in sizes if "/mai/image?" in address),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="mai-bench-ui-"))
    dags, out = work / "dags", work / "out"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE.format(dag_id=DAG_ID, out=out, images=args.images))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(work),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__WORKERS": "1",
    }
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    with emulator_process() as emulator:
        env["AIRFLOW_CONN_MAI_DEFAULT"] = connection_json(emulator)
        started = time.perf_counter()
        for _ in range(args.runs):
            subprocess.run([*airflow, "dags", "test", DAG_ID], env=env, check=True, capture_output=True)
    pngs = sorted(out.glob("*.png"))
    print(
        f"{args.runs} runs x {args.images} images made in {time.perf_counter() - started:.0f} s: "
        f"{len(pngs)} PNGs, {statistics.median(p.stat().st_size for p in pngs) / 1e6:.2f} MB median"
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the api-server did not start") from None
                time.sleep(0.25)
        chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
            )
            for label in ("cold", "warm"):
                figures = load_gallery(browser, url)
                thumbs = sorted(figures["thumbs"])
                print(
                    f"{label}: {figures['images']} images ({figures['broken']} broken, "
                    f"{figures['full_size']} full-size loads); transferred {figures['total'] / 1e6:.2f} MB "
                    f"(page {figures['html'] / 1e3:.0f} KB, thumbnails {sum(thumbs) / 1e6:.2f} MB: "
                    f"min {thumbs[0] / 1e3:.1f} / median {statistics.median(thumbs) / 1e3:.1f} / "
                    f"max {thumbs[-1] / 1e3:.1f} KB); load event {figures['load'] * 1e3:.0f} ms, "
                    f"every thumbnail loaded {figures['all'] * 1e3:.0f} ms"
                )
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
