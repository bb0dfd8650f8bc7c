"""The stack tests' daily DAG: what ``scripts/stack.sh trigger`` does to a paused, scheduled DAG.

Unpausing it lets the scheduler start the day's scheduled run beside the one ``trigger`` posts.
Both ask for the same images into the same day's folder (``{{ ds }}``, ``naming="request"``; one
run at a time), so the second reuses the first's. Connection and pool ``mai_stack``, as the other
stack-test DAG.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_mai.operators.mai import MaiGenerateImageOperator

PROMPTS = ["a striped umbrella on a beach", "a ceramic lemon squeezer", "a folded paper crane"]

with DAG(
    dag_id="mai_stack_daily",
    description="Stack tests: three generations a day, the same files for every run of a day.",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mai", "stack-test"],
    default_args={"pool": "mai_stack", "retries": 2},
):
    MaiGenerateImageOperator.partial(
        task_id="generate",
        mai_conn_id="mai_stack",
        width=768,
        height=768,
        output_path=os.path.join(
            os.environ.get("MAI_OUTPUT_BASE", "/tmp/mai-stack"), "daily", "{{ ds }}", ""
        ),
        naming="request",  # named by what is asked: a day's second run finds the first's files
        if_exists="skip",
    ).expand(prompt=PROMPTS)
