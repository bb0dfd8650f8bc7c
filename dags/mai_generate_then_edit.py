"""Generate a product shot, then edit it: the MAI provider's main example.

Both images are written through Airflow object storage under ``output_base`` (a DAG param; default
the ``MAI_OUTPUT_BASE`` environment variable, else ``~/mai-output``), each with a provenance
sidecar. Point ``output_base`` at ``s3://bucket/prefix``, ``abfs://container/prefix`` or
``gs://bucket/prefix`` to write to the cloud with your Airflow connections.

The connection ``mai_default`` needs a deployment that supports edits (MAI-Image-2.5 or
2.5-Flash); pass ``deployment`` in the run's params to use another one.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

DEFAULT_OUTPUT_BASE = os.environ.get("MAI_OUTPUT_BASE") or str(Path.home() / "mai-output")

with DAG(
    dag_id="mai_generate_then_edit",
    description="Generate an image with MAI, then edit it; both land in object storage.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example"],
    params={
        "prompt": Param(
            "A ceramic coffee mug on a wooden table, soft morning light, product photo",
            type="string",
            minLength=1,
        ),
        "edit_prompt": Param("Make the mug deep blue and add steam rising from it", type="string"),
        "output_base": Param(DEFAULT_OUTPUT_BASE, type="string"),
        "deployment": Param(None, type=["null", "string"]),
    },
) as dag:
    generate = MaiGenerateImageOperator(
        task_id="generate",
        prompt="{{ params.prompt }}",
        width=1024,
        height=1024,
        model="{{ params.deployment or '' }}",
        output_path="{{ params.output_base.rstrip('/') }}/generated/",
    )

    edit = MaiEditImageOperator(
        task_id="edit",
        image=generate.output,
        prompt="{{ params.edit_prompt }}",
        model="{{ params.deployment or '' }}",
        output_path="{{ params.output_base.rstrip('/') }}/edited/",
    )

    # One XCom, the whole dict: a function annotated "-> dict" would otherwise get
    # multiple_outputs=True inferred and write one XCom row per key besides.
    @task(multiple_outputs=False)
    def report(generated: dict, edited: dict) -> dict[str, str]:
        """Log where the images landed, for people reading the task log."""
        for label, result in (("generated", generated), ("edited", edited)):
            print(f"MAI {label} image: {result['uri']} ({result['width']}x{result['height']})")
        return {"generated": generated["uri"], "edited": edited["uri"]}

    report(generate.output, edit.output)
