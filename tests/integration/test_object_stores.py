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
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiError,
    MaiOutputExistsError,
    MaiTransientError,
)
from airflow_provider_mai.models import ImageRecord
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
from airflow_provider_mai.storage import write_image
from airflow_provider_mai.validation import png_size
from tests.support.helpers import task_context
from tests.support.storage_servers import s3_client

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


# -- buckets and containers are never created -------------------------------------------------------
def _bucket_names(moto_s3: str) -> list[str]:
    return sorted(b["Name"] for b in s3_client(moto_s3).list_buckets()["Buckets"])


def test_a_missing_s3_bucket_is_refused_before_the_request_and_never_created(emulator, s3_bucket, moto_s3):
    conn = s3_bucket.split("://", 1)[1].split("@", 1)[0]
    before = _bucket_names(moto_s3)
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=f"s3://{conn}@no-such-campaign-bucket/2026/kite.png"
    )
    with pytest.raises(MaiConfigurationError, match=r"bucket 'no-such-campaign-bucket' .* does not exist"):
        op.execute(context("g"))
    assert emulator.requests == []  # refused before the request: no quota spent
    assert _bucket_names(moto_s3) == before  # and no bucket made


def test_a_missing_azure_container_is_refused_before_the_request_and_never_created(
    emulator, azure_container, azurite
):
    from azure.storage.blob import BlobServiceClient

    conn = azure_container.split("://", 1)[1].split("@", 1)[0]
    op = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=f"abfs://{conn}@no-such-container/kites/"
    )
    with pytest.raises(MaiConfigurationError, match=r"container 'no-such-container' .* does not exist"):
        op.execute(context("g"))
    assert emulator.requests == []
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert not service.get_container_client("no-such-container").exists()


@pytest.mark.parametrize("store", ["azure_container", "s3_bucket"])
def test_folders_inside_an_existing_bucket_need_no_creating(request, emulator, store):
    base = request.getfixturevalue(store)
    result = MaiGenerateImageOperator(
        task_id="g", prompt="a kite", output_path=f"{base}/deep/er/still/kite.png"
    ).execute(context("g"))
    assert png_size(_read(result["uri"])) == (1024, 1024)
    assert _listing(base) == ["deep/er/still/kite.json", "deep/er/still/kite.png"]


def test_an_unreachable_store_is_an_error_before_the_request(emulator, monkeypatch, connect):
    from tests.support.servers import free_port

    connect()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MAI_TEST_NOWHERE",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing-secret-key",
                "extra": {"endpoint_url": f"http://127.0.0.1:{free_port()}", "region_name": "us-east-1"},
            }
        ),
    )
    op = MaiGenerateImageOperator(task_id="g", prompt="p", output_path="s3://mai_test_nowhere@bucket/k.png")
    with pytest.raises(
        MaiError, match=r"could not check that the bucket 'bucket' .*nothing was sent"
    ) as caught:
        op.execute(context("g"))
    assert emulator.requests == []
    assert "testing-secret-key" not in str(caught.value)


def test_a_store_path_without_a_connection_is_refused_before_the_request(emulator, connect):
    # abfs:// without <conn_id>@ has no account to talk to (s3:// without one falls back to boto3's own
    # credentials and endpoint, and spends ~10 s in its retries first: the same error, later).
    connect()
    op = MaiGenerateImageOperator(task_id="g", prompt="p", output_path="abfs://campaign-images/2026/hero.png")
    with pytest.raises(
        MaiConfigurationError, match=r"names no Airflow connection: write abfs://<conn_id>@campaign-images/"
    ):
        op.execute(context("g"))
    assert emulator.requests == []
