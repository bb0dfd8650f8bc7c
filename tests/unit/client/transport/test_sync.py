"""The sync transport's own parts (client/transport/sync.py): its deadline thread, in forks and in bulk.

What both transports promise is tested over each in test_both.py."""

from __future__ import annotations

import time

import pytest

from airflow_provider_mai.exceptions import (
    MaiTransientError,
)
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.hostile_answers import drip
from tests.support.servers import RawServer

#: A 1 s deadline must end the call long before a server's 30 s drip or hold would; 15 s of margin
#: holds on a loaded laptop (the deadline is what the code promises, not how fast it runs).
DEADLINE_BOUND = 15.0


def _call_in_child(url: str, queue) -> None:  # type: ignore[no-untyped-def]
    from airflow_provider_mai.client import MaiClient
    from airflow_provider_mai.client.settings import MaiSettings
    from airflow_provider_mai.models import GenerateRequest

    settings = MaiSettings.from_connection(
        "child", host=url, password="k", extra={"timeout": 1, "max_retries": 0}
    )
    started = time.monotonic()
    try:
        MaiClient(settings).send(GenerateRequest("x", 768, 768, deployment="d"))
        queue.put(("answered", 0.0))
    except MaiTransientError as exc:
        queue.put((exc.message, time.monotonic() - started))


def test_the_deadline_holds_in_a_forked_worker_process(connect):
    # Celery's prefork pool and Airflow's task runner fork: the deadline thread must exist there too.
    import multiprocessing

    with RawServer(drip("length")) as server:  # each byte in time: only the deadline can end it
        parent = MaiHook(connect(host=server.url, extra={"timeout": 0.5, "max_retries": 0}))
        with pytest.raises(MaiTransientError):  # the parent's deadline thread is running now
            parent.generate_image("x", width=768, height=768)
        queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(target=_call_in_child, args=(server.url, queue))
        child.start()
        message, elapsed = queue.get(timeout=40)
        child.join(timeout=30)
    assert "within 1 s" in message
    assert elapsed < DEADLINE_BOUND


def test_the_deadline_queue_stays_bounded_however_many_calls_finish(connect, emulator):
    from airflow_provider_mai.client.transport import sync as transport

    hook = MaiHook(connect(extra={"timeout": 3600}))  # deadlines far away: nothing expires meanwhile
    for i in range(transport._COMPACT_AT + 40):
        hook.generate_image(f"p{i}", width=768, height=768)
    assert len(transport._WATCHDOG._pending) <= transport._COMPACT_AT
