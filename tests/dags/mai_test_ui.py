"""A DAG whose run holds every case the UI plugin shows: mapped generations, an edit of one of them,
an image kept in XCom (no output_path), a failed MAI task and a plain task returning a look-alike."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

with DAG(
    "mai_test_ui",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"out": Param("/tmp/mai-test-ui", type="string")},
    tags=["mai", "test"],
):
    generate = MaiGenerateImageOperator.partial(
        task_id="generate", width=1024, height=768, output_path="{{ params.out }}/gen/"
    ).expand(prompt=["a blue kite over a beach", "a green kite over a field"])

    @task
    def pick(results: list) -> dict:
        """Pass one generation on: a MAI-shaped dict returned by a task that is not a MAI task."""
        return list(results)[1]

    chosen = pick(generate.output)
    MaiEditImageOperator(
        task_id="edit", image=chosen, prompt="Add a rainbow", output_path="{{ params.out }}/edit/"
    )
    MaiGenerateImageOperator(task_id="inline", prompt="a red kite <b>at dusk</b>", width=768, height=768)
    MaiGenerateImageOperator(task_id="blocked", prompt="emulator-blocked kite", width=768, height=768)
