"""The stack tests' generate -> edit chain, mapped, twice: synchronous and deferrable.

``mai_stack_chain`` holds a worker slot for each request; ``mai_stack_chain_deferred`` is the same
DAG with ``deferrable=True`` (the stack's triggerer sends the requests and writes the images), so a
test or ``bench/deferral.py`` compares the two on one stack. Connection and pool ``mai_stack``, as
the other stack-test DAGs: a test points them at its own emulator and sizes them.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

for dag_id, deferrable in (("mai_stack_chain", False), ("mai_stack_chain_deferred", True)):
    with DAG(
        dag_id=dag_id,
        description="Stack tests: generate then edit per prompt, mapped"
        + (", deferrable." if deferrable else ", synchronous."),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["mai", "stack-test"],
        params={
            "prompts": Param(["a red bicycle"], type="array", minItems=1),
            "output_base": Param("/tmp/mai-stack-test", type="string"),
            "edit_prompt": Param("on a seamless white studio background", type="string"),
            # false: no edits (the benchmark measures generations alone).
            "edit": Param(True, type="boolean"),
        },
        default_args={"pool": "mai_stack", "retries": 2},
        max_active_tasks=256,
    ):

        @task(pool="default_pool")
        def prompts(params: dict) -> list[str]:
            """The prompts of this run."""
            return list(params["prompts"])

        @task(pool="default_pool")
        def to_edit(results: list, params: dict) -> list:
            """The generated images to edit (none when the run asks for generations only)."""
            return list(results) if params["edit"] else []

        generate = MaiGenerateImageOperator.partial(
            task_id="generate",
            mai_conn_id="mai_stack",
            width=768,
            height=768,
            output_path="{{ params.output_base.rstrip('/') }}/generated/",
            if_exists="skip",
            deferrable=deferrable,
            max_active_tis_per_dag=256,
        ).expand(prompt=prompts())

        MaiEditImageOperator.partial(
            task_id="edit",
            mai_conn_id="mai_stack",
            prompt="{{ params.edit_prompt }}",
            output_path="{{ params.output_base.rstrip('/') }}/edited/",
            if_exists="skip",
            deferrable=deferrable,
            max_active_tis_per_dag=256,
        ).expand(image=to_edit(generate.output))
