"""Example and test DAGs run end to end on real Airflow (dag.test() on SQLite) against the emulator."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mai.emulator.render import edit_size
from airflow_provider_mai.validation import png_size
from tests.support.helpers import load_dag, run_dag
from tests.support.paths import EXAMPLE_DAGS, REPO_ROOT, TEST_DAGS

pytestmark = pytest.mark.integration


@pytest.fixture
def dag_env(airflow_db, emulator, connect):
    """Emulator connection and an empty output folder: the session's MAI_OUTPUT_BASE, emptied.

    Always the same folder: the examples read it when parsed (the campaign's Asset URI follows it),
    and Airflow 3.2's dag.test() runs the serialized DAGs an earlier test stored, so a base that
    changed between tests would run an earlier test's Asset.
    """
    connect()
    base = Path(os.environ["MAI_OUTPUT_BASE"])
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    return base


def b64_png(result: dict[str, Any]) -> bytes:
    return base64.b64decode(result["b64_json"])


def test_every_dag_file_imports_cleanly():
    from airflow.dag_processing.dagbag import DagBag

    examples = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert examples.import_errors == {}
    assert set(examples.dag_ids) == {
        "mai_generate_then_edit",
        "mai_product_batch",
        "mai_daily_campaign",
        "mai_campaign_publish",
        "mai_review_then_edit",
    }
    assert DagBag(dag_folder=str(TEST_DAGS)).import_errors == {}
    assert DagBag(dag_folder=str(REPO_ROOT / "tests" / "stack" / "dags")).import_errors == {}


def test_example_tasks_return_one_xcom_each():
    # A @task annotated "-> dict" gets multiple_outputs=True inferred: one XCom row per key besides the
    # whole value. The examples say what they mean instead.
    from airflow.dag_processing.dagbag import DagBag

    examples = DagBag(dag_folder=str(EXAMPLE_DAGS))
    tasks = [(dag.dag_id, task) for dag in examples.dags.values() for task in dag.tasks]
    assert any(task.task_id == "report" for _, task in tasks)
    assert [f"{d}.{task.task_id}" for d, task in tasks if getattr(task, "multiple_outputs", False)] == []


def test_generate_then_edit_example_writes_both_images(dag_env, emulator):
    run, states, xcoms = run_dag("mai_generate_then_edit", {"output_base": str(dag_env)})
    assert run.state == "success", states
    generated, edited = xcoms[("generate", -1)], xcoms[("edit", -1)]
    assert xcoms[("report", -1)] == {"generated": generated["uri"], "edited": edited["uri"]}
    for result, folder in ((generated, "generated"), (edited, "edited")):
        path = Path(result["uri"].removeprefix("file://"))
        assert path.parent == dag_env / folder
        assert png_size(path.read_bytes()) == (result["width"], result["height"])
        assert result["b64_json"] is None
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["sha256"] == result["sha256"]
        assert sidecar["ai_generated"] is True
    assert (
        json.loads(Path(edited["sidecar_uri"].removeprefix("file://")).read_text())["source_image"]
        == generated["uri"]
    )
    assert [r.path.rsplit("/", 1)[1] for r in emulator.requests] == ["generations", "edits"]
    # The edit really received the generated image.
    assert emulator.requests[1].image == Path(generated["uri"].removeprefix("file://")).read_bytes()


def test_xcom_chain_carries_base64_and_templated_sizes(dag_env, emulator):
    run, states, xcoms = run_dag("mai_test_xcom_chain")
    assert run.state == "success", states
    generated, edited = xcoms[("generate", -1)], xcoms[("edit", -1)]
    assert generated["uri"] is None
    assert (generated["width"], generated["height"]) == (1024, 768)
    assert png_size(b64_png(generated)) == (1024, 768)
    assert emulator.requests[0].fields["width"] == 1024  # "1024" from the template became an int
    assert emulator.requests[1].image == b64_png(generated)
    # Edits keep the aspect ratio, scaled towards one megapixel (as the service does).
    assert png_size(b64_png(edited)) == (edited["width"], edited["height"]) == edit_size(1024, 768)
    json.dumps(generated)  # the XCom is plain JSON


@pytest.mark.parametrize("dag_id", ["mai_test_mapped", "mai_test_mapped_deferrable"])
def test_mapped_generation_feeds_mapped_edits_each_to_its_own_file(dag_env, emulator, dag_id):
    run, states, xcoms = run_dag(dag_id, {"out": str(dag_env)})
    assert run.state == "success", states
    gen = sorted((dag_env / "gen").glob("*.png"))
    edit = sorted((dag_env / "edit").glob("*.png"))
    assert len(gen) == len(edit) == 3
    assert [p.stem.rsplit("__", 1)[1] for p in gen] == ["0", "1", "2"]
    assert all(":" not in p.name and "+" not in p.name for p in gen + edit)
    sources = {json.loads(p.with_suffix(".json").read_text())["source_image"] for p in edit}
    assert sources == {f"file://{p}" for p in gen}
    assert len({xcoms[("edit", i)]["sha256"] for i in range(3)}) == 3


def test_batch_example_fans_out_over_run_conf(dag_env, emulator):
    products = ["a red kettle", "a green kettle"]
    run, states, _ = run_dag("mai_product_batch", {"products": products, "output_base": str(dag_env)})
    assert run.state == "success", states
    assert len(list((dag_env / "batch" / "generated").glob("*.png"))) == 2
    assert len(list((dag_env / "batch" / "edited").glob("*.png"))) == 2
    assert sorted(r.fields["prompt"] for r in emulator.requests if r.path.endswith("generations")) == sorted(
        products
    )


def test_campaign_publishes_an_asset_that_schedules_the_publisher(dag_env, emulator):
    from airflow.sdk import Asset

    campaign = load_dag("mai_daily_campaign")
    # One event per day, after every variation exists: the outlet sits on the single task
    # downstream of the mapped generations, never on the mapped task (one event per map index).
    variation, announce = campaign.get_task("variation"), campaign.get_task("announce")
    assert not variation.partial_kwargs.get("outlets")
    assert [o.name for o in announce.outlets if isinstance(o, Asset)] == ["mai_campaign_images"]
    assert announce.upstream_task_ids == {"variation"}
    run, states, xcoms = run_dag("mai_daily_campaign")
    assert run.state == "success", states
    # This run's images (the session's output base may hold other runs' too).
    images = [Path(uri.removeprefix("file://")) for uri in xcoms[("announce", -1)]]
    assert len(images) == 3
    assert all(p.is_file() and p.is_relative_to(dag_env / "campaign") for p in images)
    prompts = [r.fields["prompt"] for r in emulator.requests]
    assert all(run.logical_date.strftime("%Y-%m-%d") in p for p in prompts)  # {{ ds }} was rendered

    publisher = load_dag("mai_campaign_publish")
    assert [a.name for a in publisher.timetable.asset_condition.objects] == ["mai_campaign_images"]
    run, states, xcoms = run_dag("mai_campaign_publish")
    assert run.state == "success", states
    assert xcoms[("list_new_images", -1)] == [f"file://{p}" for p in images]


@pytest.mark.parametrize(
    ("conf", "requests_sent"),
    [
        ({"width": "big"}, 0),  # bad template value: refused before any request
        ({"prompt": "   "}, 0),  # empty prompt
        ({"prompt": "a scene with [violence]"}, 1),  # the content filter answers once; no retry
    ],
)
def test_permanent_errors_fail_the_task_without_airflow_retries(dag_env, emulator, conf, requests_sent):
    run, states, _ = run_dag("mai_test_permanent_failure", conf)
    assert run.state == "failed"
    assert states[("generate", -1)] == "failed"  # not up_for_retry, although retries=3
    assert len(emulator.requests) == requests_sent


def test_transient_errors_are_retried_inside_the_task(dag_env, emulator):
    from airflow_provider_mai.emulator import Fault

    emulator.inject(Fault(status=503), times=2)
    run, states, xcoms = run_dag("mai_test_permanent_failure")
    assert run.state == "success", states
    assert [r.status for r in emulator.requests] == [503, 503, 200]
    assert xcoms[("generate", -1)]["width"] == 1024


def test_request_naming_makes_a_rerun_free_across_runs(dag_env, emulator):
    conf = {"out": str(dag_env)}
    first, states, first_xcoms = run_dag("mai_test_reuse_across_runs", conf)
    assert first.state == "success", states
    assert len(emulator.requests) == 4  # two generations, two edits
    second, states, second_xcoms = run_dag("mai_test_reuse_across_runs", conf)
    assert second.state == "success", states
    assert second.run_id != first.run_id
    assert len(emulator.requests) == 4  # a new run, and not one request more
    for key, result in second_xcoms.items():
        assert result["reused"] is True and result["attempts"] == 0
        assert result["uri"] == first_xcoms[key]["uri"] and result["sha256"] == first_xcoms[key]["sha256"]
    names = sorted(p.name for p in (dag_env / "catalogue").glob("*.png"))
    assert len(names) == 2 and all(n.startswith("generate__mai-image-2-5__") for n in names)


def test_a_literal_bad_size_is_an_import_error_at_parse_time(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "bad_size.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_provider_mai.operators.mai import MaiGenerateImageOperator\n"
        "with DAG('bad_size', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        "    MaiGenerateImageOperator(task_id='g', prompt='a cat', width=512)\n"
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert "width=512 is too small" in error
    assert "each side at least 768 px and width x height at most 1,048,576 px" in error


def test_a_real_dag_run_emits_the_image_lineage(airflow_db, connect, emulator, tmp_path):
    """`airflow dags test` with the openlineage provider's file transport: the events carry our datasets."""
    import os

    from tests.support.helpers import airflow_dags_test

    pytest.importorskip("airflow.providers.openlineage", reason="the openlineage provider is not installed")

    connect()
    events_file = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
    }
    done = airflow_dags_test("mai_generate_then_edit", env, {"output_base": str(tmp_path / "out")})
    assert done.returncode == 0, done.stdout[-3000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    complete = {  # task events are named <dag>.<task>; the DAG's own event has no dot
        e["job"]["name"].split(".", 1)[1]: e
        for e in events
        if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]
    }
    generated = complete["generate"]["outputs"][0]
    edited = complete["edit"]["outputs"][0]
    assert generated["namespace"] == edited["namespace"] == "file"
    assert generated["name"].startswith(str(tmp_path / "out" / "generated"))
    assert [(d["namespace"], d["name"]) for d in complete["edit"]["inputs"]] == [("file", generated["name"])]
    assert complete["generate"]["job"]["facets"]["mai_image"]["deployment"] == "mai-image-2-5"
    assert complete["edit"]["run"]["facets"]["mai_image"]["ai_generated"] is True


def test_deferrable_batch_matches_the_sync_records_and_leaves_no_secret_or_bytes_in_the_db(dag_env, emulator):
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.conftest import API_KEY

    _, _, sync = run_dag("mai_test_mapped", {"out": str(dag_env / "sync")})
    run, states, deferred = run_dag("mai_test_mapped_deferrable", {"out": str(dag_env / "deferred")})
    assert run.state == "success", states
    assert sync.keys() == deferred.keys()
    for key, record in deferred.items():
        assert record.keys() == sync[key].keys()
        assert record["b64_json"] is None and record["attempts"] == 1 and not record["reused"]
        sidecar = json.loads(Path(record["sidecar_uri"].removeprefix("file://")).read_text())
        assert (
            sidecar.keys()
            == json.loads(Path(sync[key]["sidecar_uri"].removeprefix("file://")).read_text()).keys()
        )
    with create_session() as session:
        triggers = [json.dumps(t.kwargs, default=str) for t in session.query(Trigger).all()]
        next_kwargs = [
            json.dumps(ti.next_kwargs, default=str)
            for ti in session.query(TaskInstance).filter_by(dag_id="mai_test_mapped_deferrable")
        ]
        xcom_rows = [
            json.dumps(XComModel.deserialize_value(row), default=str)
            for row in session.query(XComModel).filter_by(dag_id="mai_test_mapped_deferrable")
        ]
    assert triggers, "dag.test() stores each deferral's trigger"
    for text in triggers + next_kwargs + xcom_rows:
        assert API_KEY not in text
        assert len(text) < 4096  # a record, never image bytes (a PNG is megabytes of base64)
