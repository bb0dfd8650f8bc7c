"""DAGs the test suite runs on real Airflow (``dag.test()``), parameterised through run conf."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property

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

# The same generate -> edit batch in both modes: the deferrable one runs its requests in the
# triggerer (dag.test() runs the trigger inline) and must give the same files and records.
for _dag_id, _deferrable in (("mai_test_mapped", False), ("mai_test_mapped_deferrable", True)):
    with DAG(
        _dag_id,
        schedule=None,
        start_date=START,
        params={"out": Param("/tmp/mai-test-out", type="string")},
    ):
        mapped = MaiGenerateImageOperator.partial(
            task_id="generate",
            width=768,
            height=768,
            output_path="{{ params.out }}/gen/",
            deferrable=_deferrable,
        ).expand(prompt=["a blue kite", "a green kite", "a red kite"])
        MaiEditImageOperator.partial(
            task_id="edit",
            prompt="Add a rainbow",
            output_path="{{ params.out }}/edit/",
            deferrable=_deferrable,
        ).expand(image=mapped.output)

with DAG(
    "mai_test_reuse_across_runs",
    schedule=None,
    start_date=START,
    params={"out": Param("/tmp/mai-test-out", type="string")},
):
    # Named by request: every run asks for the same images, so only the first run pays for them.
    catalogue = MaiGenerateImageOperator.partial(
        task_id="generate",
        width=768,
        height=768,
        output_path="{{ params.out }}/catalogue/",
        naming="request",
        if_exists="skip",
    ).expand(prompt=["a walnut chair", "an oak table"])
    MaiEditImageOperator.partial(
        task_id="edit",
        prompt="on a white background",
        output_path="{{ params.out }}/catalogue-white/",
        naming="request",
        if_exists="skip",
    ).expand(image=catalogue.output)

with DAG(
    "mai_test_permanent_failure",
    schedule=None,
    start_date=START,
    params={"prompt": "fine", "width": "1024"},
    default_args={"retries": 3},
):
    MaiGenerateImageOperator(task_id="generate", prompt="{{ params.prompt }}", width="{{ params.width }}")


# -- secrets end to end ----------------------------------------------------------------------------
# Azure's token service cannot run here, so the Entra ID task gets its token from a stand-in
# credential (the token text comes from the environment of the `airflow dags test` process).
# Everything after the credential - the hook, the HTTP call, logging, XCom - is the real thing.


class _EnvTokenCredential:
    """A TokenCredential issuing the token in MAI_TEST_ENTRA_TOKEN (stands in for Entra ID)."""

    def get_token(self, *scopes: str, **kwargs: object):
        import os
        import time

        from azure.core.credentials import AccessToken

        return AccessToken(os.environ["MAI_TEST_ENTRA_TOKEN"], int(time.time()) + 3600)


class _EntraGenerateOperator(MaiGenerateImageOperator):
    @cached_property
    def hook(self):  # type: ignore[override]
        from airflow_provider_mai.hooks.mai import MaiHook

        return MaiHook(self.mai_conn_id, credential=_EnvTokenCredential())


with DAG("mai_test_secrets", schedule=None, start_date=START):
    with_key = MaiGenerateImageOperator(
        task_id="generate_with_key", prompt="A key-signed lighthouse", mai_conn_id="mai_secret_key"
    )
    with_token = _EntraGenerateOperator(
        task_id="generate_with_token", prompt="A token-signed lighthouse", mai_conn_id="mai_secret_entra"
    )
    MaiEditImageOperator(
        task_id="edit_with_key", image=with_token.output, prompt="At dusk", mai_conn_id="mai_secret_key"
    )
    MaiGenerateImageOperator(task_id="denied", prompt="Never drawn", mai_conn_id="mai_secret_wrong_key")
