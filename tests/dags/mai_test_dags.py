"""DAGs the test suite runs on real Airflow (``dag.test()``), parameterised through run conf."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

START = datetime(2026, 1, 1)

with DAG("mai_test_xcom_chain", schedule=None, start_date=START, params={"width": "1024", "height": "768"}):
    generate = MaiGenerateImageOperator(
        task_id="generate",
        prompt="A red bicycle against a yellow wall",
        width="{{ params.width }}",
        height="{{ params.height }}",
    )
    MaiEditImageOperator(task_id="edit", image=generate.output, prompt="Make the wall green")

with DAG(
    "mai_test_mapped",
    schedule=None,
    start_date=START,
    params={"out": Param("/tmp/mai-test-out", type="string")},
):
    mapped = MaiGenerateImageOperator.partial(
        task_id="generate", width=768, height=768, output_path="{{ params.out }}/gen/"
    ).expand(prompt=["a blue kite", "a green kite", "a red kite"])
    MaiEditImageOperator.partial(
        task_id="edit", prompt="Add a rainbow", output_path="{{ params.out }}/edit/"
    ).expand(image=mapped.output)

with DAG(
    "mai_test_permanent_failure",
    schedule=None,
    start_date=START,
    params={"prompt": "fine", "width": "1024"},
    default_args={"retries": 3},
):
    MaiGenerateImageOperator(task_id="generate", prompt="{{ params.prompt }}", width="{{ params.width }}")
