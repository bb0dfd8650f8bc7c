"""A batch of product shots: generation fanned out with dynamic task mapping, then each one edited.

Quota, not workers, is the limit: every MAI task runs in the Airflow pool ``mai_image_quota``.
Size the pool from the deployment's requests-per-minute (RPM) quota and the call latency:

    slots = RPM x latency_seconds / 60      (e.g. 12 RPM x 60 s / 60 = 12 slots)

Create it once: ``airflow pools set mai_image_quota 12 "MAI-Image-2.5 RPM quota"``. Fewer slots
leave quota unused; more slots only earn 429 answers (which the hook retries, at a cost in time).
With ``deferrable=True`` a waiting task leaves its pool slot unless the pool counts deferred tasks:
``airflow pools set mai_image_quota 12 "MAI quota" --include-deferred`` (see docs/deferral.md).

``if_exists="skip"`` makes reruns and backfills free: an image whose sidecar records the same
request is returned as it is, without spending quota.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

DEFAULT_OUTPUT_BASE = os.environ.get("MAI_OUTPUT_BASE") or str(Path.home() / "mai-output")
MAI_POOL = os.environ.get("MAI_POOL", "mai_image_quota")
PRODUCTS = [
    "A stainless steel water bottle on a mossy rock by a mountain stream",
    "A pair of canvas sneakers on a sunlit city pavement",
    "A leather backpack on a wooden bench in an autumn park",
    "A ceramic teapot on a linen tablecloth beside a window",
]

with DAG(
    dag_id="mai_product_batch",
    description="Fan out product shots with dynamic task mapping, then edit each one.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example"],
    params={
        "products": Param(PRODUCTS, type="array", minItems=1),
        "output_base": Param(DEFAULT_OUTPUT_BASE, type="string"),
        "edit_prompt": Param("Place the product on a seamless white studio background", type="string"),
    },
    default_args={"pool": MAI_POOL, "retries": 2},
) as dag:

    @task
    def product_prompts(params: dict) -> list[str]:
        """The prompts of this run (a param, so a run can bring its own list)."""
        return list(params["products"])

    generate = MaiGenerateImageOperator.partial(
        task_id="generate",
        width=1024,
        height=1024,
        output_path="{{ params.output_base.rstrip('/') }}/batch/generated/",
        if_exists="skip",
        max_active_tis_per_dag=8,
    ).expand(prompt=product_prompts())

    MaiEditImageOperator.partial(
        task_id="edit",
        prompt="{{ params.edit_prompt }}",
        output_path="{{ params.output_base.rstrip('/') }}/batch/edited/",
        if_exists="skip",
        max_active_tis_per_dag=8,
    ).expand(image=generate.output)
