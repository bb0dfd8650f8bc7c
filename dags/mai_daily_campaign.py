"""Daily campaign variations, published as an Asset so that other DAGs run on new images.

``mai_daily_campaign`` writes a few variations of the day's campaign image (one folder per day).
Once all of them exist, one task - downstream of the mapped generations - updates the Asset
``mai_campaign_images`` with a single event listing the day's images. (An outlet on the mapped task
itself would emit one event per variation: the scheduler may start the consumer on the first one,
before the others are written.) ``mai_campaign_publish`` is scheduled on that Asset: it runs once
per day's set and publishes exactly the images its event lists.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_provider_mai.operators.mai import MaiGenerateImageOperator

OUTPUT_BASE = (os.environ.get("MAI_OUTPUT_BASE") or str(Path.home() / "mai-output")).rstrip("/")
CAMPAIGN_URI = OUTPUT_BASE + "/campaign/"
if "://" not in CAMPAIGN_URI:
    CAMPAIGN_URI = "file://" + CAMPAIGN_URI
CAMPAIGN_IMAGES = Asset(name="mai_campaign_images", uri=CAMPAIGN_URI)

VARIATIONS = [
    "Autumn sale poster: warm orange leaves framing the words 'Fall Into Savings', for {{ ds }}",
    "Autumn sale poster: a cosy reading nook with a mug and knitted blanket, for {{ ds }}",
    "Autumn sale poster: a city street at golden hour with shopping bags, for {{ ds }}",
]

with DAG(
    dag_id="mai_daily_campaign",
    description="Generate the day's campaign variations and publish them as an Asset.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example"],
):
    variations = MaiGenerateImageOperator.partial(
        task_id="variation",
        width=1365,
        height=768,
        output_path=CAMPAIGN_URI + "{{ ds }}/",
        if_exists="skip",
    ).expand(prompt=VARIATIONS)

    @task(outlets=[CAMPAIGN_IMAGES])
    def announce(results: list[dict[str, Any]], **context: Any) -> list[str]:
        """One Asset event for the whole day, after every variation is written; it lists them."""
        images = sorted(result["uri"] for result in results)
        context["outlet_events"][CAMPAIGN_IMAGES].extra = {"day": context["ds"], "images": images}
        return images

    announce(variations.output)


with DAG(
    dag_id="mai_campaign_publish",
    description="Runs whenever a day's campaign images land; publishes the images each event lists.",
    schedule=[CAMPAIGN_IMAGES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example"],
):

    @task
    def list_new_images(**context: Any) -> list[str]:
        """The images of the events that started this run (a real pipeline would publish them).

        A run started by hand (no event) lists every PNG in the campaign folder instead.
        """
        from airflow.sdk import ObjectStoragePath

        events = (context.get("triggering_asset_events") or {}).get(CAMPAIGN_IMAGES, [])
        if events:
            images = sorted({uri for event in events for uri in event.extra.get("images", [])})
            missing = [uri for uri in images if not ObjectStoragePath(uri).exists()]
            if missing:
                raise FileNotFoundError(f"announced but not found: {', '.join(missing)}")
        else:
            root = ObjectStoragePath(CAMPAIGN_URI)
            images = sorted(str(p) for p in root.rglob("*.png")) if root.exists() else []
        for uri in images:
            print(f"ready to publish: {uri}")
        return images

    list_new_images()
