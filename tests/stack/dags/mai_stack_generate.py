"""The stack tests' and the stack benchmark's DAG: one mapped generation per prompt.

Everything it uses is named for the stack tests alone - connection ``mai_stack``, pool
``mai_stack`` - so that a test (or ``bench/stack_throughput.py``) points them at its own emulator
and sizes them, without touching the stack's ``mai_default`` or ``mai_image_quota``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiGenerateImageOperator

with DAG(
    dag_id="mai_stack_generate",
    description="Stack tests: one MAI generation per prompt, mapped, in the pool mai_stack.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mai", "stack-test"],
    params={
        "prompts": Param(["a red bicycle"], type="array", minItems=1),
        "output_base": Param("/tmp/mai-stack-test", type="string"),
    },
    default_args={"pool": "mai_stack", "retries": 2},
    max_active_tasks=64,
):
    # Outside the pool, so that a pool of no slots holds back the generations alone (a burst waits
    # there until released: bench/stack_burst.py).
    @task(pool="default_pool")
    def prompts(params: dict) -> list[str]:
        """The prompts of this run."""
        return list(params["prompts"])

    MaiGenerateImageOperator.partial(
        task_id="generate",
        mai_conn_id="mai_stack",
        width=768,
        height=768,
        output_path="{{ params.output_base.rstrip('/') }}/",
        if_exists="skip",
        max_active_tis_per_dag=64,
    ).expand(prompt=prompts())
