"""Deferrable mode on the stack: the triggerer sends the requests and writes the images.

The same generate -> edit chain, mapped over 8 prompts, runs synchronously (``mai_stack_chain``)
and deferrable (``mai_stack_chain_deferred``, tests/stack/dags/mai_stack_chain.py) against one
emulator: images, sidecars and XCom records have the same shape, and while the tasks wait in the
triggerer the metadata database's ``trigger`` rows (and the events in ``task_instance``) hold no
key, no token and no image bytes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.stack.conftest import (
    TEST_POOL,
    metadata_rows,
    run_dag,
    stray_files,
    verified_images,
)

pytestmark = pytest.mark.stack

PROMPTS = [f"Deferral check {i}: a brass desk lamp with a {i}-fold shade" for i in range(8)]
MAI_TASKS = ("generate", "edit")
#: What image bytes look like in text: a PNG's signature as base64 and as escaped bytes.
IMAGE_MARKERS = ("iVBORw0KGgo", "\\x89PNG", "\\u0089PNG", "IHDR")


def shape(value: Any) -> Any:
    """A JSON value's shape: the keys of every dict and the type of every leaf."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def results_of(api, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    tis = [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] in MAI_TASKS]
    assert len(tis) == 2 * len(PROMPTS) and {ti["state"] for ti in tis} == {"success"}, tis
    return {
        (ti["task_id"], ti["map_index"]): api.result(dag_id, run_id, ti["task_id"], ti["map_index"])
        for ti in tis
    }


def sidecar(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(result["sidecar_uri"].removeprefix("file://")).read_text())


class TriggerRows:
    """Collect, while a run goes on, every ``trigger`` row and every deferred task's ``next_kwargs``
    (rows live only while their tasks wait, so they are read every 0.2 s)."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.triggers: dict[int, tuple[str, str]] = {}
        self.next_kwargs: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for trigger_id, classpath, kwargs in metadata_rows(
                self.stack, "SELECT id, classpath, kwargs FROM trigger"
            ):
                self.triggers[trigger_id] = (classpath, kwargs)
            self.next_kwargs += [
                json.dumps(row[0])
                for row in metadata_rows(
                    self.stack, "SELECT next_kwargs FROM task_instance WHERE next_kwargs IS NOT NULL"
                )
            ]

    def __enter__(self) -> TriggerRows:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def decrypted(stack, stored: str) -> str:
    """A trigger row's kwargs as Airflow reads them back (Fernet with the stack's key)."""
    from cryptography.fernet import Fernet

    if stored.startswith("{"):  # Airflow reads plain JSON too (rows from some migration paths)
        return stored
    return Fernet(stack.secrets["fernet_key"].encode()).decrypt(stored.encode()).decode()


@pytest.mark.timeout(900)
def test_deferrable_chain_on_the_triggerer_matches_the_synchronous_one(stack, api, output, stack_emulator):
    emulator = stack_emulator(latency=(2.0, 4.0))
    api.put_pool(TEST_POOL, 16, "stack tests", include_deferred=True)
    conf: dict[str, Any] = {"prompts": PROMPTS}
    sync_run = run_dag(api, "mai_stack_chain", {**conf, "output_base": str(output / "sync")})
    assert sync_run["state"] == "success"
    sync_requests = len(emulator.requests)
    with TriggerRows(stack) as rows:
        deferred_run = run_dag(
            api, "mai_stack_chain_deferred", {**conf, "output_base": str(output / "deferred")}
        )
    assert deferred_run["state"] == "success"
    assert sync_requests == len(emulator.requests) - sync_requests == 2 * len(PROMPTS)
    sync = results_of(api, "mai_stack_chain", sync_run["dag_run_id"])
    deferred = results_of(api, "mai_stack_chain_deferred", deferred_run["dag_run_id"])

    # The triggerer did the work: one trigger row of ours per deferred task.
    ours = {
        i: kwargs for i, (classpath, kwargs) in rows.triggers.items() if classpath.endswith("MaiImageTrigger")
    }
    assert len(ours) == 2 * len(PROMPTS), rows.triggers.keys()

    # Images, sidecars, XCom records: present, verified, and shaped as in the synchronous mode.
    for mode, results in (("sync", sync), ("deferred", deferred)):
        images = verified_images(list(results.values()))
        assert sorted((output / mode).rglob("*.png")) == sorted(images)
        assert stray_files(output / mode) == []
        for index in range(len(PROMPTS)):  # each edit started from its own generated image
            assert sidecar(results[("edit", index)])["source_image"] == results[("generate", index)]["uri"]
    for key in sync:
        assert shape(deferred[key]) == shape(sync[key]), key
        assert shape(sidecar(deferred[key])) == shape(sidecar(sync[key])), key
        assert deferred[key]["attempts"] == sync[key]["attempts"] == 1
        assert not deferred[key].get("reused")
    # The same request made the same record, apart from where it was written and when.
    same = {"prompt", "width", "height", "deployment", "fingerprint"} & set(sync[("generate", 0)])
    for index in range(len(PROMPTS)):
        assert {k: deferred[("generate", index)][k] for k in same} == {
            k: sync[("generate", index)][k] for k in same
        }

    # The metadata database: no key, no token, no image bytes in a trigger's kwargs (as stored,
    # encrypted, and as Airflow reads them back) nor in an event waiting in next_kwargs.
    texts = [stored for stored in ours.values()] + [decrypted(stack, s) for s in ours.values()]
    texts += rows.next_kwargs
    for text in texts:
        assert not [name for name, secret in stack.secrets.items() if secret in text]
        assert not [marker for marker in IMAGE_MARKERS if marker in text]
        assert "Bearer" not in text and "api-key" not in text.lower()
        assert len(text) < 8_000  # small kwargs: an image would be ≈ 2 MB
    kwargs = [json.loads(decrypted(stack, s)) for s in ours.values()]
    assert all("mai_stack" in json.dumps(k) for k in kwargs)  # the connection id, not its contents
    assert stack.secrets["api_key"] and rows.next_kwargs  # the checks above compared something
