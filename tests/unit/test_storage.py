"""Results written (storage.py): names, paths kept literal, if_exists races, reuse, atomic writes."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc
from pathlib import Path

import pytest

from airflow_provider_mai.emulator import MaiEmulator
from airflow_provider_mai.exceptions import (
    MaiConfigurationError,
    MaiOutputExistsError,
)
from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator
from airflow_provider_mai.storage import MAX_FILE_NAME_BYTES, default_file_name, location_key
from tests.support.connections import API_KEY
from tests.support.helpers import files_in, task_context


# -- 10-13. output paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x.json", "x.JSON", "x.jpg", "x"])
def test_an_output_path_that_is_not_a_png_is_refused_before_sending(connect, emulator, tmp_path, name):
    connect()
    with pytest.raises(MaiConfigurationError, match=r"must name a \.png file"):  # a literal: at parse time
        MaiGenerateImageOperator(task_id="g", prompt="p", output_path=str(tmp_path / name))
    op = MaiGenerateImageOperator(task_id="g", prompt="p", output_path="{{ params.out }}")
    op.output_path = str(tmp_path / name)  # as rendered
    with pytest.raises(MaiConfigurationError, match=r"must name a \.png file"):
        op.execute(task_context())
    assert emulator.requests == []
    assert files_in(tmp_path) == []


def test_if_exists_fail_lets_exactly_one_of_two_racing_tasks_write(connect, tmp_path):
    # Both tasks check (nothing there), both wait for the service, both try to write: one wins.
    with MaiEmulator(api_key=API_KEY, latency=0.5) as slow:
        connect(host=slow.url)
        target = tmp_path / "hero.png"
        outcomes: dict[str, object] = {}

        def run(prompt: str) -> None:
            op = MaiGenerateImageOperator(
                task_id="g", prompt=prompt, width=768, height=768, output_path=str(target), if_exists="fail"
            )
            try:
                outcomes[prompt] = op.execute(task_context())
            except MaiOutputExistsError as exc:
                outcomes[prompt] = exc

        threads = [threading.Thread(target=run, args=(p,)) for p in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(slow.requests) == 2  # both had passed the early check
    won = [r for r in outcomes.values() if isinstance(r, dict)]
    lost = [r for r in outcomes.values() if isinstance(r, MaiOutputExistsError)]
    assert len(won) == 1 and len(lost) == 1
    assert "written by another task" in str(lost[0])
    assert hashlib.sha256(target.read_bytes()).hexdigest() == won[0]["sha256"]
    assert json.loads(target.with_suffix(".json").read_text())["prompt"] == won[0]["prompt"]
    assert files_in(tmp_path) == ["hero.json", "hero.png"]


def test_the_longest_legal_ids_give_a_short_stable_distinct_name(connect, emulator, tmp_path):
    dag_id, task_id = "d" * 250, "t" * 250
    run_id = "manual__2026-11-29T10:00:00.123456+00:00"
    name = default_file_name(dag_id, run_id, task_id, 12)
    assert len(name.encode()) <= MAX_FILE_NAME_BYTES and name.endswith(".png")
    assert name == default_file_name(dag_id, run_id, task_id, 12)
    assert name != default_file_name(dag_id, run_id, task_id, 13)
    assert name.startswith("ddddd")
    connect()
    op = MaiGenerateImageOperator(task_id="t", prompt="p", width=768, height=768, output_path=f"{tmp_path}/")
    result = op.execute(task_context(task_id, map_index=12, run_id=run_id, dag_id=dag_id))
    assert Path(result["uri"].removeprefix("file://")).name == name
    assert sorted(files_in(tmp_path)) == sorted([name, name[:-4] + ".json"])


@pytest.mark.parametrize("folder", ["what?", "a#b", "q?x=1#frag", "sp ace%20"])
def test_local_paths_with_url_characters_are_kept_literal(connect, emulator, tmp_path, folder):
    connect()
    target_folder = tmp_path / folder
    generated = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=f"{target_folder}/"
    ).execute(task_context("g"))
    (png,) = [p for p in target_folder.iterdir() if p.suffix == ".png"]
    assert generated["uri"] == f"file://{png}"
    edited = MaiEditImageOperator(
        task_id="e", prompt="blue", image=generated, output_path=f"{target_folder}/edited.png"
    ).execute(task_context("e"))
    assert (target_folder / "edited.png").exists()
    assert edited["source_image"] == generated["uri"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # nothing landed anywhere else


def test_reuse_reads_at_most_the_cap_of_whatever_sits_at_the_path(connect, emulator, tmp_path):
    connect(extra={"max_response_mb": 8})
    target = tmp_path / "x.png"

    def op():  # type: ignore[no-untyped-def]
        return MaiGenerateImageOperator(
            task_id="g", prompt="p", width=768, height=768, output_path=str(target), if_exists="skip"
        )

    op().execute(task_context())
    with open(target, "r+b") as handle:
        handle.truncate(3 * 1024**3)  # replaced behind our back by something huge (sparse)
    tracemalloc.start()
    try:
        assert op().execute(task_context())["reused"] is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assert len(emulator.requests) == 2


def test_an_image_made_by_another_endpoint_is_not_reused(connect, emulator, tmp_path):
    def op():  # type: ignore[no-untyped-def]
        return MaiGenerateImageOperator(
            task_id="g",
            prompt="p",
            width=768,
            height=768,
            output_path=f"{tmp_path}/",
            naming="request",
            if_exists="skip",
        )

    with MaiEmulator(api_key=API_KEY) as other:  # e.g. CI's emulator, then the real resource
        connect(host=other.url)
        first = op().execute(task_context())
    connect()
    second = op().execute(task_context())
    assert second["uri"] == first["uri"]  # the same request, the same name...
    assert second["reused"] is False and second["endpoint"] == emulator.url  # ...but not the same service
    assert len(emulator.requests) == 1


def test_if_exists_fail_works_where_hard_links_do_not(connect, emulator, tmp_path, monkeypatch):
    import errno

    def no_links(source, target):  # type: ignore[no-untyped-def] # what a FUSE or SMB mount answers
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    connect()
    target = tmp_path / "x.png"
    result = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=str(target), if_exists="fail"
    ).execute(task_context())
    assert hashlib.sha256(target.read_bytes()).hexdigest() == result["sha256"]
    with pytest.raises(MaiOutputExistsError):
        MaiGenerateImageOperator(
            task_id="g", prompt="q", width=768, height=768, output_path=str(target), if_exists="fail"
        ).execute(task_context())
    assert files_in(tmp_path) == ["x.json", "x.png"]


def test_default_file_names_are_safe_and_distinct():
    names = {
        default_file_name("dag", "manual__2026-11-25T00:00:00+00:00", "t", -1),
        default_file_name("dag", "manual__2026-11-25T00:00:00+00:00", "t", 0),
        default_file_name("dag", "manual__2026-11-25T00:00:01+00:00", "t", -1),
        default_file_name("dag", "manual__2026-11-25T00:00:00+00:00", "u", -1),
    }
    assert len(names) == 4
    assert all(
        set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for n in names
    )


@pytest.mark.parametrize("if_exists", ["fail", "overwrite", "skip"])
def test_a_dangling_link_at_the_target_is_refused_before_sending(connect, emulator, tmp_path, if_exists):
    connect()
    target = tmp_path / "hero.png"
    target.symlink_to(tmp_path / "unmounted" / "hero.png")
    op = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=str(target), if_exists=if_exists
    )
    with pytest.raises(
        MaiConfigurationError, match=r"is a symbolic link to '.*unmounted/hero.png', which does not exist"
    ):
        op.execute(task_context())
    assert emulator.requests == []  # no quota spent
    assert target.is_symlink()  # and the link is left as it was


def test_a_dangling_link_on_the_way_to_the_target_is_named(connect, emulator, tmp_path):
    connect()
    (tmp_path / "shots").symlink_to(tmp_path / "gone")
    op = MaiGenerateImageOperator(task_id="g", prompt="p", output_path=f"{tmp_path}/shots/day1/")
    with pytest.raises(
        MaiConfigurationError, match=r"shots, on the way to output_path .* is a symbolic link"
    ):
        op.execute(task_context())
    assert emulator.requests == []


def test_location_key_spells_every_way_of_naming_a_local_file_alike(tmp_path):
    png = tmp_path / "out" / "a.png"
    spellings = (
        str(png),
        f"file://{png}",
        f"{tmp_path}/out/../out/a.png",
        "/" + str(png).replace("/", "//"),
        f"file:///{png}",
    )
    assert {location_key(spelling) for spelling in spellings} == {f"file://{png}"}
    # A host in a file URI is not this machine's root: it names another (relative) file.
    assert location_key(f"file://localhost{png}") != f"file://{png}"
    # An object store's key is kept as written ('..' is a plain part of an S3 key).
    assert location_key("s3://conn@bucket/a/../b.png") == "s3://conn@bucket/a/../b.png"
