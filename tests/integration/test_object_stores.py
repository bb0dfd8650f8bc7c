"""The operators writing to and reading from real object stores on loopback.

Azure Blob Storage is Azurite (``abfs://`` through the microsoft-azure provider and adlfs); S3 is
moto's server mode (``s3://`` through the amazon provider and s3fs). Both are reached through
ordinary Airflow connections, exactly as a DAG author would configure them."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_mai.emulator import Fault
from airflow_provider_mai.exceptions import MaiOutputExistsError, MaiTransientError
from airflow_provider_mai.models import ImageRecord
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
from airflow_provider_mai.storage import write_image
from airflow_provider_mai.validation import png_size
from tests.support.helpers import task_context

pytestmark = pytest.mark.integration


def context(task_id: str) -> dict:
    return task_context(task_id, dag_id="stores", run_id="scheduled__2026-11-25T06:00:00+00:00")


def _read(uri: str) -> bytes:
    return ObjectStoragePath(uri).read_bytes()


def _listing(base: str) -> list[str]:
    root = ObjectStoragePath(base)
    prefix = root.path.rstrip("/") + "/"
    root.fs.invalidate_cache()
    return sorted(key.removeprefix(prefix) for key in root.fs.find(root.path))


@pytest.mark.parametrize("store", ["azure_container", "s3_bucket"])
def test_generate_writes_png_and_sidecar_to_the_store(request, emulator, store):
    base = request.getfixturevalue(store)
    result = MaiGenerateImageOperator(
        task_id="generate", prompt="a red bicycle", width=1024, height=768, output_path=f"{base}/shots/"
    ).execute(context("generate"))

    png = _read(result["uri"])
    assert png_size(png) == (1024, 768)
    assert (
        hashlib.sha256(png).hexdigest()
        == result["sha256"]
        == json.loads(_read(result["sidecar_uri"]))["sha256"]
    )
    assert result["uri"].startswith(base.split("://")[0] + "://")
    assert result["b64_json"] is None
    # Exactly the image and its sidecar: no temp objects, no partial uploads.
    stem = "stores__scheduled__2026-11-25T06_00_00_00_00__generate"
    assert _listing(base) == [f"shots/{stem}.json", f"shots/{stem}.png"]


def test_generate_to_azure_then_edit_into_s3(emulator, azure_container, s3_bucket):
    generated = MaiGenerateImageOperator(
        task_id="generate", prompt="a teapot", output_path=f"{azure_container}/gen/"
    ).execute(context("generate"))
    edited = MaiEditImageOperator(
        task_id="edit", prompt="make it gold", image=generated, output_path=f"{s3_bucket}/edits/teapot.png"
    ).execute(context("edit"))

    sent = emulator.requests[-1]
    assert sent.path.endswith("/images/edits")
    assert hashlib.sha256(sent.image).hexdigest() == generated["sha256"]  # the input was read from Azure
    edited_png = _read(edited["uri"])
    assert png_size(edited_png) == (edited["width"], edited["height"])
    sidecar = json.loads(_read(edited["sidecar_uri"]))
    assert sidecar["source_image"] == generated["uri"]
    assert sidecar["ai_generated"] is True


def test_edit_reads_an_object_storage_path_with_its_connection(emulator, s3_bucket):
    source = ObjectStoragePath(f"{s3_bucket}/inputs/photo.png")
    generated = MaiGenerateImageOperator(task_id="g", prompt="a lamp").execute(context("g"))
    source.write_bytes(base64.b64decode(generated["b64_json"]))

    result = MaiEditImageOperator(task_id="e", prompt="at night", image=source).execute(context("e"))
    assert emulator.requests[-1].image == source.read_bytes()
    assert result["b64_json"]


@pytest.mark.parametrize("store", ["azure_container", "s3_bucket"])
def test_skip_reuses_the_stored_image_without_a_request(request, emulator, store):
    base = request.getfixturevalue(store)

    def run() -> dict:
        return MaiGenerateImageOperator(
            task_id="g", prompt="a kite", output_path=f"{base}/kites/kite.png", if_exists="skip"
        ).execute(context("g"))

    first = run()
    second = run()
    assert len(emulator.requests) == 1
    assert second["reused"] is True
    assert second["sha256"] == first["sha256"]


@pytest.mark.parametrize("store", ["azure_container", "s3_bucket"])
def test_failed_generation_leaves_the_stored_image_untouched(request, connect, emulator, store):
    base = request.getfixturevalue(store)
    target = f"{base}/kept/image.png"
    MaiGenerateImageOperator(task_id="g", prompt="first", output_path=target).execute(context("g"))
    before = _read(target)

    emulator.inject(Fault(truncate=True), times=10)
    with pytest.raises(MaiTransientError):
        MaiGenerateImageOperator(task_id="g", prompt="second", output_path=target).execute(context("g"))
    assert _read(target) == before
    assert _listing(base) == ["kept/image.json", "kept/image.png"]


@pytest.mark.parametrize("store", ["azure_container", "s3_bucket"])
def test_an_exclusive_write_never_replaces_an_object_that_appeared_meanwhile(request, emulator, store):
    # What a task racing another one with if_exists="fail" meets: the object arrived after its check.
    base = request.getfixturevalue(store)
    target = ObjectStoragePath(f"{base}/race/hero.png")
    result = MaiGenerateImageOperator(task_id="g", prompt="winner", output_path=str(target)).execute(
        context("g")
    )
    winner = _read(result["uri"])
    loser = ImageRecord.from_sidecar(json.loads(_read(result["sidecar_uri"])), prompt="loser")
    with pytest.raises(MaiOutputExistsError, match="written by another task"):
        write_image(target, b"\x89PNG loser", loser, exclusive=True)
    assert _read(str(target)) == winner
    assert json.loads(_read(result["sidecar_uri"]))["prompt"] == "winner"
    assert _listing(base) == ["race/hero.json", "race/hero.png"]
