"""Operators' execute() against the emulator and a real local filesystem.

A task's context is reduced to what the operators read (the task instance's ids and the run id);
everything else - HTTP, the hook, object storage, files - is real. Whole DAG runs are in test_dags.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiOutputExistsError,
    MaiTransientError,
    MaiValidationError,
)
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
from airflow_provider_mai.storage import default_file_name
from airflow_provider_mai.validation import png_size
from tests.support.helpers import RUN_ID, files_in, make_png
from tests.support.helpers import task_context as context


@pytest.fixture(autouse=True)
def _conn(connect):
    connect()


# -- contract surface ------------------------------------------------------------------------------
def test_arguments_are_kept_as_attributes_and_fields_are_templated():
    op = MaiGenerateImageOperator(
        task_id="g", prompt="p", width="1024", height=768, model="dep", output_path="/x/", mai_conn_id="c"
    )
    assert (op.prompt, op.width, op.height, op.model, op.output_path, op.mai_conn_id) == (
        "p",
        "1024",
        768,
        "dep",
        "/x/",
        "c",
    )
    shared = {"prompt", "model", "output_path", "extra_params", "mai_conn_id"}
    assert set(op.template_fields) == shared | {"width", "height"}
    edit = MaiEditImageOperator(task_id="e", prompt="p", image="/in.png")
    assert set(edit.template_fields) == shared | {"image"}
    assert edit.mai_conn_id == "mai_default"


@pytest.mark.parametrize("operator", ["generate", "edit"])
def test_a_templated_connection_id_is_the_one_the_hook_uses(connect, emulator, monkeypatch, operator):
    # Only the rendered id names a connection: were the hook made before rendering (or from the raw
    # template), the task would fail on an unknown connection instead.
    monkeypatch.delenv("AIRFLOW_CONN_MAI_DEFAULT")
    connect("mai_blue")
    kwargs = {"image": make_png()} if operator == "edit" else {}
    cls = MaiEditImageOperator if operator == "edit" else MaiGenerateImageOperator
    op = cls(task_id="t", prompt="a kettle", mai_conn_id="mai_{{ params.team }}", **kwargs)
    ctx = {**context(), "params": {"team": "blue"}}
    op.render_template_fields(ctx)
    assert op.mai_conn_id == "mai_blue"
    result = op.execute(ctx)
    assert op.hook.mai_conn_id == "mai_blue"
    assert result["sha256"] and len(emulator.requests) == 1


def test_unknown_if_exists_is_refused_at_dag_parse_time():
    with pytest.raises(ValueError, match="if_exists"):
        MaiGenerateImageOperator(task_id="g", prompt="p", if_exists="sometimes")


# -- XCom ------------------------------------------------------------------------------------------
def test_without_output_path_the_png_travels_in_xcom(emulator):
    result = MaiGenerateImageOperator(task_id="g", prompt="a kite", width=768, height=768).execute(context())
    png = base64.b64decode(result["b64_json"])
    assert png_size(png) == (768, 768)
    assert result["uri"] is None and result["sidecar_uri"] is None
    assert result["sha256"] == hashlib.sha256(png).hexdigest()
    assert result["size_bytes"] == len(png)
    assert result["request_id"] and result["usage"]["num_output_tokens"] == 576
    assert (result["model"], result["deployment"], result["prompt"]) == (
        "MAI-Image-2.5",
        "mai-image-2-5",
        "a kite",
    )
    assert json.loads(json.dumps(result)) == result


# -- object storage --------------------------------------------------------------------------------
def test_folder_output_gets_a_unique_safe_name_and_a_sidecar(emulator, tmp_path):
    op = MaiGenerateImageOperator(task_id="hero", prompt="a kite", output_path=f"{tmp_path}/new/sub/")
    result = op.execute(context("hero", map_index=3))
    expected = tmp_path / "new" / "sub" / default_file_name("campaign", RUN_ID, "hero", 3)
    assert result["uri"] == f"file://{expected}"
    assert result["b64_json"] is None
    assert ":" not in expected.name and "+" not in expected.name
    assert expected.name.endswith("__hero__3.png")
    sidecar = json.loads(expected.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "a kite"
    assert sidecar["deployment"] == "mai-image-2-5"
    assert sidecar["sha256"] == hashlib.sha256(expected.read_bytes()).hexdigest()
    assert (sidecar["width"], sidecar["height"]) == (1024, 1024)
    assert sidecar["ai_generated"] is True and "AI" in sidecar["disclosure"]
    assert sidecar["created_utc"].endswith("+00:00")
    assert sidecar["request_id"] == result["request_id"]
    assert result["sidecar_uri"] == f"file://{expected.with_suffix('.json')}"
    # No temporary files left behind.
    assert files_in(tmp_path / "new" / "sub") == sorted([expected.name, expected.with_suffix(".json").name])


@pytest.mark.parametrize("form", ["plain", "file_uri", "object_storage_path"])
def test_exact_output_path_in_every_form(emulator, tmp_path, form):
    target = tmp_path / "exact.png"
    output = {
        "plain": str(target),
        "file_uri": f"file://{target}",
        "object_storage_path": ObjectStoragePath(f"file://{target}"),
    }[form]
    MaiGenerateImageOperator(task_id="g", prompt="p", output_path=output, width=768, height=768).execute(
        context()
    )
    assert png_size(target.read_bytes()) == (768, 768)
    assert target.with_suffix(".json").exists()


def test_relative_output_path_is_made_absolute(emulator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = MaiGenerateImageOperator(
        task_id="g", prompt="p", output_path="rel/", width=768, height=768
    ).execute(context())
    assert result["uri"].startswith(f"file://{tmp_path}/rel/")


def test_edit_reads_upstream_result_and_records_its_source(emulator, tmp_path):
    generated = MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{tmp_path}/g/").execute(
        context("g")
    )
    edited = MaiEditImageOperator(
        task_id="e", prompt="blue", image=generated, output_path=f"{tmp_path}/e/"
    ).execute(context("e"))
    sidecar = json.loads(Path(edited["sidecar_uri"].removeprefix("file://")).read_text())
    assert sidecar["source_image"] == generated["uri"]
    assert sidecar["operation"] == "edit"
    assert emulator.requests[-1].image == Path(generated["uri"].removeprefix("file://")).read_bytes()


def test_edit_from_xcom_base64_has_no_source_location(emulator):
    generated = MaiGenerateImageOperator(task_id="g", prompt="p").execute(context("g"))
    edited = MaiEditImageOperator(task_id="e", prompt="blue", image=generated).execute(context("e"))
    assert png_size(base64.b64decode(edited["b64_json"])) == (1024, 1024)


# -- if_exists -------------------------------------------------------------------------------------
def test_skip_reuses_an_identical_earlier_result_without_spending_quota(emulator, tmp_path):
    def make():
        return MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{tmp_path}/", if_exists="skip")

    first = make().execute(context())
    second = make().execute(context())
    assert len(emulator.requests) == 1
    assert second["reused"] is True and first["reused"] is False
    for key in ("uri", "sha256", "width", "height", "request_id", "deployment", "usage"):
        assert second[key] == first[key]


def test_skip_regenerates_when_the_request_changed(emulator, tmp_path):
    MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{tmp_path}/", if_exists="skip").execute(
        context()
    )
    result = MaiGenerateImageOperator(
        task_id="g", prompt="other", output_path=f"{tmp_path}/", if_exists="skip"
    ).execute(context())
    assert result["reused"] is False
    assert len(emulator.requests) == 2


def test_skip_regenerates_when_the_image_does_not_match_its_sidecar(emulator, tmp_path):
    def op():
        return MaiGenerateImageOperator(
            task_id="g", prompt="p", output_path=f"{tmp_path}/x.png", if_exists="skip"
        )

    op().execute(context())
    (tmp_path / "x.png").write_bytes(make_png())  # replaced behind our back
    assert op().execute(context())["reused"] is False
    assert len(emulator.requests) == 2


def test_skip_for_edits_depends_on_the_input_image(emulator, tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(make_png(800, 600))

    def op():
        return MaiEditImageOperator(
            task_id="e", prompt="p", image=str(source), output_path=f"{tmp_path}/out/", if_exists="skip"
        )

    op().execute(context())
    assert op().execute(context())["reused"] is True
    source.write_bytes(make_png(800, 600, colour=(1, 2, 3)))
    assert op().execute(context())["reused"] is False
    assert len(emulator.requests) == 2


def test_fail_refuses_to_replace_an_existing_image(emulator, tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"precious")
    with pytest.raises(MaiOutputExistsError) as info:
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=str(target), if_exists="fail").execute(
            context()
        )
    assert isinstance(info.value, AirflowFailException)
    assert target.read_bytes() == b"precious"
    assert emulator.requests == []


def test_overwrite_replaces_image_and_sidecar(emulator, tmp_path):
    target = tmp_path / "x.png"
    MaiGenerateImageOperator(task_id="g", prompt="one", output_path=str(target)).execute(context())
    MaiGenerateImageOperator(task_id="g", prompt="two", output_path=str(target)).execute(context())
    assert json.loads(target.with_suffix(".json").read_text())["prompt"] == "two"


def test_a_failed_run_leaves_the_earlier_image_intact_and_no_partial_files(connect, emulator, tmp_path):
    target = tmp_path / "x.png"
    MaiGenerateImageOperator(task_id="g", prompt="one", output_path=str(target)).execute(context())
    before = target.read_bytes(), target.with_suffix(".json").read_text()
    emulator.inject(Fault(truncate=True), times=10)
    with pytest.raises(MaiTransientError):
        MaiGenerateImageOperator(task_id="g", prompt="two", output_path=str(target)).execute(context())
    assert (target.read_bytes(), target.with_suffix(".json").read_text()) == before
    assert files_in(tmp_path) == ["x.json", "x.png"]


# -- bad input: nothing is sent --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"width": "big"}, MaiValidationError, "whole number"),
        ({"width": "1024.5"}, MaiValidationError, "whole number"),
        ({"width": "767"}, MaiValidationError, "too small"),
        ({"width": 767, "height": 1365}, MaiValidationError, "too small"),
        ({"width": 1024, "height": 767}, MaiValidationError, "too small"),
        ({"width": 1025, "height": 1024}, MaiValidationError, "too many"),
        ({"width": 768, "height": 1366}, MaiValidationError, "too many"),
        ({"prompt": ""}, MaiValidationError, "empty"),
        ({"prompt": " "}, MaiValidationError, "empty"),
        ({"prompt": "\n\t "}, MaiValidationError, "empty"),
        ({"extra_params": {"model": "x"}}, MaiValidationError, "cannot set"),
    ],
)
def test_bad_generation_input_sends_nothing(emulator, kwargs, error, match):
    # A literal is refused when the operator is built: the DAG shows an import error at parse time.
    with pytest.raises(error, match=match):
        MaiGenerateImageOperator(task_id="g", **{"prompt": "p", **kwargs})
    # The same value arriving through a template is refused when the task runs, before any request.
    op = MaiGenerateImageOperator(task_id="g", **{"prompt": "p", **dict.fromkeys(kwargs, "{{ x }}")})
    for name, value in kwargs.items():
        setattr(op, name, value)  # what rendering the template would have produced
    with pytest.raises(error, match=match):
        op.execute(context())
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (None, "image is required"),
        ("", "image is required"),
        ({"uri": None, "b64_json": None}, "neither"),
        ({"width": 1024, "height": 1024, "sha256": "ab"}, "neither"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 40, "WebP"),
        ({"b64_json": "%%%"}, "not valid base64"),
        (b"GIF89a" + b"\0" * 32, "GIF"),
        ("/definitely/not/here.png", "not found"),
    ],
)
def test_bad_edit_input_sends_nothing(emulator, image, match):
    op = MaiEditImageOperator(task_id="e", prompt="p", image=image)
    with pytest.raises(MaiValidationError, match=match):
        op.execute(context())
    assert emulator.requests == []


@pytest.mark.parametrize(("width", "height"), [("1024", "1024"), (" 768 ", "1365"), (1365, 768)])
def test_templated_sizes_given_as_text_are_accepted(emulator, width, height):
    result = MaiGenerateImageOperator(task_id="g", prompt="p", width=width, height=height).execute(context())
    assert (result["width"], result["height"]) == (int(width) // 16 * 16, int(height) // 16 * 16)
    assert len(emulator.requests) == 1


@pytest.mark.parametrize(
    ("conn", "match"),
    [
        ({"host": None}, "has no host"),
        ({"host": "   "}, "has no host"),
        ({"host": "http://mai.example.com"}, "plain http"),
        ({"host": "ftp://mai.example.com"}, "not an http"),
        ({"extra": {"auth_type": "certificate"}}, "'auth_type' must be"),
    ],
)
def test_unusable_connections_send_nothing(connect, emulator, tmp_path, conn, match):
    connect(**conn)
    with pytest.raises(MaiConfigurationError, match=match):
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{tmp_path}/").execute(context())
    assert emulator.requests == []
    assert files_in(tmp_path) == []


def test_text_file_named_png_is_refused(emulator, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("hello, not an image")
    with pytest.raises(MaiValidationError, match="PNG or JPEG"):
        MaiEditImageOperator(task_id="e", prompt="p", image=str(fake)).execute(context())
    assert emulator.requests == []


@pytest.mark.parametrize("where", ["under_a_file", "existing_folder_without_slash", "virtual_file_system"])
def test_unwritable_output_locations_are_refused_before_sending(emulator, tmp_path, where):
    blocker = tmp_path / "blocker"
    if where == "under_a_file":
        blocker.write_text("a file")
        output = str(blocker / "sub" / "x.png")
    elif where == "existing_folder_without_slash":
        blocker.mkdir()
        output = str(blocker)
    else:  # looks writable by its bits when running as root, but nothing can be created there
        output = "/proc/mai-output/"
    with pytest.raises(MaiConfigurationError):
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=output).execute(context())
    assert emulator.requests == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_is_refused_before_sending(emulator, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(MaiConfigurationError, match="permission"):
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{locked}/").execute(context())
    assert emulator.requests == []


# -- deferrable mode -------------------------------------------------------------------------------
def test_deferrable_defers_with_small_kwargs_and_no_secret(tmp_path):
    import json as _json

    from airflow.sdk.exceptions import TaskDeferred

    from tests.conftest import API_KEY

    op = MaiGenerateImageOperator(task_id="g", prompt="a kite", output_path=f"{tmp_path}/", deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "airflow_provider_mai.triggers.mai.MaiImageTrigger"
    assert deferred.value.method_name == "execute_complete"
    text = _json.dumps(kwargs)
    assert API_KEY not in text and len(text) < 2000
    assert kwargs["output_uri"].endswith(".png") and not files_in(tmp_path)


def test_deferrable_reuse_never_defers(tmp_path):
    out = f"{tmp_path}/"
    first = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=out, naming="request", if_exists="skip"
    ).execute(context())
    again = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=out, naming="request", if_exists="skip", deferrable=True
    ).execute(context())
    assert again["reused"] and again["sha256"] == first["sha256"]


def test_deferrable_with_a_templated_empty_output_path_is_refused_when_run():
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path="{{ params.out }}", deferrable=True
    )
    op.output_path = ""  # as the template renders it
    with pytest.raises(MaiValidationError, match="output_path"):
        op.execute(context())


@pytest.mark.parametrize("if_exists", ["overwrite", "skip"])
def test_deferral_names_the_matching_image_an_overwrite_replaces(tmp_path, emulator, if_exists):
    from airflow.sdk.exceptions import TaskDeferred

    out = str(tmp_path / "fixed.png")
    before = MaiGenerateImageOperator(task_id="g", prompt="a kite", output_path=out).execute(context())
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=out, if_exists=if_exists, deferrable=True
    )
    if if_exists == "skip":  # the match is the result: no deferral at all
        assert op.execute(context())["reused"]
        return
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    assert deferred.value.trigger.serialize()[1]["existing_sha256"] == before["sha256"]


def test_deferral_over_another_requests_image_names_none(tmp_path, emulator):
    from airflow.sdk.exceptions import TaskDeferred

    out = str(tmp_path / "fixed.png")
    MaiGenerateImageOperator(task_id="g", prompt="a kite", output_path=out).execute(context())
    op = MaiGenerateImageOperator(task_id="g", prompt="a heron", output_path=out, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    assert deferred.value.trigger.serialize()[1]["existing_sha256"] is None


# -- where deferrable comes from: the task > the connection's extra > [operators] default_deferrable --
@pytest.mark.parametrize(
    ("argument", "extra", "default", "defers"),
    [
        (False, True, "True", False),  # the task's own argument wins
        (True, False, "False", True),
        (None, True, "False", True),  # then the connection
        (None, False, "True", False),
        (None, None, "True", True),  # then the configuration
        (None, None, None, False),  # else synchronous
    ],
)
def test_deferrable_comes_from_the_task_then_the_connection_then_the_config(
    connect, emulator, monkeypatch, tmp_path, argument, extra, default, defers
):
    from airflow.sdk.exceptions import TaskDeferred

    connect(extra={"deferrable": extra})
    if default is None:
        monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", default)
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=f"{tmp_path}/", deferrable=argument
    )
    if defers:
        with pytest.raises(TaskDeferred):
            op.execute(context())
        assert emulator.requests == []
    else:
        assert op.execute(context())["uri"] and len(emulator.requests) == 1


def test_a_default_deferral_does_not_apply_to_a_task_without_output_path(connect, emulator, monkeypatch):
    connect(extra={"deferrable": "true"})
    result = MaiGenerateImageOperator(task_id="g", prompt="a kite").execute(context())
    assert result["b64_json"] and len(emulator.requests) == 1


def test_a_bad_deferrable_extra_fails_the_task_naming_the_connection(connect, emulator, tmp_path):
    connect(extra={"deferrable": "perhaps"})
    op = MaiGenerateImageOperator(task_id="g", prompt="a kite", output_path=f"{tmp_path}/")
    with pytest.raises(MaiConfigurationError, match=r"connection 'mai_default'.*'deferrable'"):
        op.execute(context())
    assert emulator.requests == []
