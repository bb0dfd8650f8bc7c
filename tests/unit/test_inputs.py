"""Edit inputs (inputs.py): bounded reads, paths and URIs, web URLs only when allowed."""

from __future__ import annotations

import base64
import tracemalloc

import pytest

from airflow_provider_mai.exceptions import (
    MaiValidationError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.operators.mai import MaiEditImageOperator
from tests.support.helpers import make_png, task_context
from tests.support.servers import RawServer, http_answer


def test_edit_accepts_path_uri_objectstoragepath_and_upstream_dict(hook, emulator, tmp_path):
    from airflow.sdk import ObjectStoragePath

    source = tmp_path / "in.png"
    source.write_bytes(make_png(1024, 1024))
    png_b64 = base64.b64encode(make_png(1024, 1024)).decode()
    for image in (
        str(source),
        source,
        f"file://{source}",
        ObjectStoragePath(f"file://{source}"),
        {"uri": f"file://{source}", "b64_json": None},
        {"uri": None, "b64_json": png_b64},
    ):
        result = hook.edit_image(image, "sepia")
        assert (result.width, result.height) == (1024, 1024)
    assert len(emulator.requests) == 6
    assert all(r.image == make_png(1024, 1024) for r in emulator.requests)


def test_edit_missing_file_is_a_clear_error(hook, emulator, tmp_path):
    with pytest.raises(MaiValidationError, match="not found"):
        hook.edit_image(str(tmp_path / "nope.png"), "x")
    with pytest.raises(MaiValidationError, match="neither 'uri' nor 'b64_json'"):
        hook.edit_image({"width": 5}, "x")
    assert emulator.requests == []


# -- 9. edit inputs: bounded reads, no URL fetching unless the connection allows it --------------
def _edit(via: str, image, conn_id: str = "mai_default") -> None:  # type: ignore[no-untyped-def]
    if via == "hook":
        MaiHook(conn_id).edit_image(image, "brighter")
    else:
        MaiEditImageOperator(task_id="e", prompt="brighter", image=image, mai_conn_id=conn_id).execute(
            task_context("e")
        )


@pytest.mark.parametrize("via", ["hook", "operator"])
def test_an_endless_edit_input_is_read_only_up_to_the_cap(connect, emulator, via):
    connect(extra={"max_input_mb": 1})
    with pytest.raises(
        MaiValidationError, match="larger than 1 MB, the max_input_mb of connection 'mai_default'"
    ):
        _edit(via, "/dev/zero")
    assert emulator.requests == []


@pytest.mark.parametrize("via", ["hook", "operator"])
def test_a_2_gb_edit_input_is_refused_without_reading_it_whole(connect, emulator, tmp_path, via):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:
        handle.write(make_png())
        handle.truncate(2 * 1024**3)  # sparse: costs no disk
    connect()
    tracemalloc.start()
    try:
        with pytest.raises(MaiValidationError, match="larger than 50 MB"):
            _edit(via, str(huge))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 120 * 1024 * 1024  # the cap (50 MB, +1 byte) and a copy, never the 2 GB
    assert emulator.requests == []


@pytest.mark.parametrize("via", ["hook", "operator"])
@pytest.mark.parametrize("url", ["http://127.0.0.2:8799/cat.png", "https://example.invalid/cat.png"])
def test_web_urls_are_not_fetched_by_default(connect, emulator, via, url):
    connect()
    with pytest.raises(MaiValidationError, match="allow_http_inputs"):
        _edit(via, url)
    with pytest.raises(MaiValidationError, match="allow_http_inputs"):
        _edit(via, {"uri": url, "b64_json": None})  # an upstream result can carry one too
    assert emulator.requests == []


def test_web_urls_are_fetched_when_the_connection_allows_it(connect, emulator):
    png = make_png(640, 480)

    def serve(conn, request):  # type: ignore[no-untyped-def]
        conn.sendall(http_answer(200, png, {"Content-Type": "image/png"}))

    with RawServer(serve) as server:
        connect(extra={"allow_http_inputs": True})
        image = MaiHook().edit_image(f"{server.url}/cat.png", "brighter")
    assert image.width > 0
    assert emulator.requests[0].image == png


def test_an_oversized_upstream_b64_json_is_refused_before_decoding(connect, emulator):
    connect(extra={"max_input_mb": 1})
    with pytest.raises(MaiValidationError, match="b64_json is larger than 1 MB"):
        _edit("hook", {"uri": None, "b64_json": "A" * (2 * 1024 * 1024)})
    assert emulator.requests == []


# -- from the hostile review -------------------------------------------------------------------------
def test_a_presigned_url_is_never_quoted_nor_recorded_with_its_signature(connect, emulator):
    connect()
    signed = "https://account.blob.example/c/cat.png?sv=2024&sig=SECRET-SIGNATURE#frag"
    with pytest.raises(MaiValidationError) as info:
        _edit("hook", signed)
    assert "SECRET" not in str(info.value) and "https://account.blob.example/c/cat.png" in str(info.value)
    png = make_png(640, 480)
    with RawServer(lambda conn, request: conn.sendall(http_answer(200, png))) as server:
        connect(extra={"allow_http_inputs": True})
        result = MaiEditImageOperator(
            task_id="e", prompt="brighter", image=f"{server.url}/cat.png?sig=SECRET-SIGNATURE"
        ).execute(task_context("e"))
    assert result["source_image"] == f"{server.url}/cat.png"
    assert b"sig=SECRET-SIGNATURE" in server.requests[0]  # sent, as the URL requires; recorded nowhere
