"""OpenLineage: datasets and facets from both operators, with the openlineage provider installed."""

from __future__ import annotations

import base64
import json
import sys
from types import SimpleNamespace

import pytest

# Before the imports below: lineage.py needs the openlineage client, which the provider brings.
pytest.importorskip(
    "airflow.providers.openlineage", reason="apache-airflow-providers-openlineage not installed"
)

from airflow_provider_mai.lineage import dataset_name
from airflow_provider_mai.operators.mai import (
    MaiEditImageOperator,
    MaiGenerateImageOperator,
)


def context(task_id: str) -> dict:
    return {"ti": SimpleNamespace(dag_id="lineage", task_id=task_id, map_index=-1), "run_id": "manual__1"}


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/img/a.png", ("file", "/data/img/a.png")),
        ("file:///data/img/a.png", ("file", "/data/img/a.png")),
        ("s3://bucket/shots/a.png", ("s3://bucket", "shots/a.png")),
        ("s3://aws_conn@bucket/shots/a.png", ("s3://bucket", "shots/a.png")),
        ("gs://bucket/a.png", ("gs://bucket", "a.png")),
        ("abfs://container/a/b.png", ("abfss://container", "a/b.png")),  # no connection: no account
        (None, None),
    ],
)
def test_dataset_names_follow_openlineage_naming(location, expected):
    assert dataset_name(location) == expected


def test_generate_reports_the_written_png_and_the_deployment(connect, emulator, tmp_path):
    connect()
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a barn", width=768, height=768, output_path=f"{tmp_path}/"
    )
    result = op.execute(context("g"))
    lineage = op.get_openlineage_facets_on_complete(None)

    assert lineage.inputs == []
    (output,) = lineage.outputs
    assert (output.namespace, output.name) == ("file", result["uri"].removeprefix("file://"))
    job = lineage.job_facets["mai_image"]
    assert (job.operation, job.deployment, job.endpoint) == ("generate", "mai-image-2-5", emulator.url)
    run = lineage.run_facets["mai_image"]
    assert (run.width, run.height, run.sha256, run.reused) == (768, 768, result["sha256"], False)

    from openlineage.client.serde import Serde

    serialised = json.loads(Serde.to_json(job)) | json.loads(Serde.to_json(run))
    assert serialised["deployment"] == "mai-image-2-5"
    assert serialised["ai_generated"] is True
    assert "_producer" in serialised


def test_edit_reports_its_input_and_output(connect, emulator, tmp_path):
    connect()
    generated = MaiGenerateImageOperator(
        task_id="g", prompt="a barn", output_path=f"{tmp_path}/in.png"
    ).execute(context("g"))
    op = MaiEditImageOperator(
        task_id="e", prompt="in snow", image=generated, output_path=f"{tmp_path}/out.png"
    )
    op.execute(context("e"))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(tmp_path / "in.png"))]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(tmp_path / "out.png"))]
    assert lineage.job_facets["mai_image"].operation == "edit"


def test_results_in_xcom_have_no_output_dataset(connect, emulator):
    connect()
    generated = MaiGenerateImageOperator(task_id="g", prompt="a barn").execute(context("g"))
    op = MaiEditImageOperator(task_id="e", prompt="in snow", image=base64.b64decode(generated["b64_json"]))
    op.execute(context("e"))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == lineage.outputs == []
    assert lineage.run_facets["mai_image"].sha256


def test_without_openlineage_installed_the_method_is_inert(connect, emulator, monkeypatch, tmp_path):
    connect()
    op = MaiGenerateImageOperator(task_id="g", prompt="a barn", output_path=f"{tmp_path}/")
    op.execute(context("g"))
    monkeypatch.delitem(sys.modules, "airflow_provider_mai.lineage", raising=False)
    monkeypatch.setitem(sys.modules, "openlineage.client.facet_v2", None)  # as if not installed
    assert op.get_openlineage_facets_on_complete(None) is None


@pytest.mark.integration
def test_azure_output_is_named_with_its_storage_account(request, connect, emulator):
    base = request.getfixturevalue("azure_container")
    op = MaiGenerateImageOperator(task_id="g", prompt="a barn", output_path=f"{base}/lineage/")
    result = op.execute(context("g"))
    (output,) = op.get_openlineage_facets_on_complete(None).outputs
    container = base.rsplit("@", 1)[1]
    assert output.namespace == f"abfss://{container}@devstoreaccount1.dfs.core.windows.net"
    assert output.name == result["uri"].split(container, 1)[1].lstrip("/")
