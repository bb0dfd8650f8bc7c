"""Generate a few variations, let a person pick one in Airflow's UI, edit only that one, publish it.

The review is a Human-in-the-loop step (Airflow >= 3.1, standard provider's ``HITLBranchOperator``):
the run waits in **Required Actions** with the variations' thumbnails shown in the request's body
(served by this provider's UI plugin, so install ``airflow-provider-mai[ui]`` on the api-server).
The reviewer picks "Variation N" - only that image is edited, then published - or "Reject all",
and the run ends cleanly with nothing edited. On Airflow 3.1/3.2 the waiting task is deferred, so
a triggerer must run; from 3.3 it waits in the ``awaiting_input`` state without one.

To answer without the UI, send ``{"chosen_options": ["Variation 2"], "params_input": {}}`` to
``PATCH /api/v2/dags/mai_review_then_edit/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import DAG, Param, task

from airflow_provider_mai.links import review_markdown
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

DEFAULT_OUTPUT_BASE = os.environ.get("MAI_OUTPUT_BASE") or str(Path.home() / "mai-output")
#: One variation per style; the reviewer's options follow this list.
STYLES = (
    "studio product photo, seamless white background",
    "lifestyle photo on a sunlit kitchen counter",
    "flat vector illustration, bold colours",
)
OPTIONS = [f"Variation {number}" for number in range(1, len(STYLES) + 1)]
REJECT = "Reject all"
OUTPUT = "{{ params.output_base.rstrip('/') }}"

with DAG(
    dag_id="mai_review_then_edit",
    description="Generate variations with MAI, a person picks one (thumbnails shown), only it is edited.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "example", "human-in-the-loop"],
    params={
        "prompt": Param("A ceramic coffee mug with a minimalist logo", type="string", minLength=1),
        "edit_prompt": Param("Make the mug deep blue and add steam rising from it", type="string"),
        "output_base": Param(DEFAULT_OUTPUT_BASE, type="string"),
        "deployment": Param(None, type=["null", "string"]),
    },
) as dag:
    generate = MaiGenerateImageOperator.partial(
        task_id="generate",
        width=1024,
        height=1024,
        model="{{ params.deployment or '' }}",
        output_path=f"{OUTPUT}/candidates/",
        if_exists="skip",  # a cleared run re-asks the reviewer, not the service
    ).expand(prompt=[f"{{{{ params.prompt }}}}, {style}" for style in STYLES])

    @task
    def review_body(candidates: list[dict], **context) -> str:
        """The review request's markdown: the variations side by side, as thumbnails (served by
        the UI plugin; the reviewer's login cookie goes with them), with their prompts."""
        table = review_markdown(context["dag"].dag_id, context["run_id"], "generate", candidates, OPTIONS)
        return f"Pick the variation to edit, or reject them all (nothing is edited then).\n\n{table}"

    review = HITLBranchOperator(
        task_id="review",
        subject="Which image should be edited and published?",
        body=review_body(generate.output),
        options=[*OPTIONS, REJECT],
        # Each option runs one branch; every other branch is skipped.
        options_mapping={**{option: f"edit_{n}" for n, option in enumerate(OPTIONS, 1)}, REJECT: "rejected"},
        # To stop waiting after a while: response_timeout=timedelta(days=7), defaults=[REJECT].
    )

    edits = [
        MaiEditImageOperator(
            task_id=f"edit_{number}",
            # The chosen candidate, by its location (the upstream task is mapped: pull its index).
            image=f"{{{{ ti.xcom_pull(task_ids='generate', map_indexes={number - 1})['uri'] }}}}",
            prompt="{{ params.edit_prompt }}",
            model="{{ params.deployment or '' }}",
            output_path=f"{OUTPUT}/edited/",
        )
        for number in range(1, len(STYLES) + 1)
    ]
    rejected = EmptyOperator(task_id="rejected")

    # One XCom (multiple_outputs would otherwise be inferred from the dict return type).
    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False)
    def publish(**context) -> dict[str, str]:
        """Hand the approved, edited image on: here it is logged and returned - put your CMS or
        delivery step here. Skipped (with the edits) when the reviewer rejects every variation."""
        edited = [result for result in context["ti"].xcom_pull(task_ids=[e.task_id for e in edits]) if result]
        (image,) = edited
        print(f"MAI published image: {image['uri']} (prompt: {image['prompt']!r})")
        return {"uri": image["uri"], "sidecar_uri": image["sidecar_uri"], "sha256": image["sha256"]}

    review >> [*edits, rejected]
    edits >> publish()
