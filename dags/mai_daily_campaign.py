"""Daily campaign variations, published as an Asset so that other DAGs run on new images.

``mai_daily_campaign`` writes a few variations of the day's campaign image (one folder per day)
and declares the folder as the Asset ``mai_campaign_images``. ``mai_campaign_publish`` is
scheduled on that Asset: it runs after each update and lists what arrived.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

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
    MaiGenerateImageOperator.partial(
        task_id="variation",
        width=1365,
        height=768,
        output_path=CAMPAIGN_URI + "{{ ds }}/",
        if_exists="skip",
        outlets=[CAMPAIGN_IMAGES],
    ).expand(prompt=VARIATIONS)


with DAG(
    dag_id="mai_campaign_publish",
    description="Runs whenever new campaign images land; lists them for publishing.",
    schedule=[CAMPAIGN_IMAGES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example"],
):

    @task
    def list_new_images() -> list[str]:
        """Every PNG in the campaign folder (a real pipeline would publish them)."""
        from airflow.sdk import ObjectStoragePath

        root = ObjectStoragePath(CAMPAIGN_URI)
        images = sorted(str(p) for p in root.rglob("*.png")) if root.exists() else []
        for uri in images:
            print(f"ready to publish: {uri}")
        return images

    list_new_images()
