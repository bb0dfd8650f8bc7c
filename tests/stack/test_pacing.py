"""Pacing on the stack: two Celery workers sharing one deployment's quota (connection extra ``rpm``).

The two workers have separate temp folders, as two hosts would: the default file schedule
(``rpm_state_dir`` unset) is then one per worker, and only a shared ``rpm_state_dir`` or the Redis
schedule (``rpm_redis_conn_id``) makes them take turns. The emulator records when each request
arrived; paced requests are at least 60/rpm seconds apart. (Share of the quota reached and 429s
over minutes are measured by bench/stack_throughput.py.)
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from airflow_provider_mai.client.pacing.file_schedule import SAFETY_MARGIN
from tests.stack.conftest import MEASUREMENTS, TEST_POOL, config, run_dag, stray_files

pytestmark = pytest.mark.stack

RPM = 30  # a slot every 2.02 s
INTERVAL = 60 / RPM * SAFETY_MARGIN
PROMPTS = [f"A paper lantern, number {i}, glowing over a quiet canal" for i in range(14)]


def send_times(stack_emulator, api, output, **connection_extra: Any) -> tuple[list[float], set[str]]:
    """Run one generation per prompt on the stack; (arrival times of the requests, workers used)."""
    emulator = stack_emulator(rpm=RPM, latency=(0.2, 0.6), connection_extra={"rpm": RPM, **connection_extra})
    api.put_pool(TEST_POOL, 8, "stack tests")  # more tasks at once than the quota serves: pacing decides
    run = run_dag(api, "mai_stack_generate", {"prompts": PROMPTS, "output_base": str(output)}, within=300)
    assert run["state"] == "success"
    tis = [
        ti
        for ti in api.task_instances("mai_stack_generate", run["dag_run_id"])
        if ti["task_id"] == "generate"
    ]
    assert len(tis) == len(PROMPTS) and {ti["state"] for ti in tis} == {"success"}
    assert [r.status for r in emulator.requests] == [200] * len(PROMPTS)  # no 429, no retry
    assert len(list(output.glob("*.png"))) == len(PROMPTS) and stray_files(output) == []
    return sorted(r.received for r in emulator.requests), {ti["hostname"] for ti in tis}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_one_schedule(times: list[float]) -> None:
    """Requests sent on one schedule: slots ``INTERVAL`` apart, as seen by the emulator. A request's
    arrival trails its slot by its send time (a busy machine: up to a second), so a gap may shrink by
    that much; over the whole run the rate is the quota's. (Two schedules: gaps alternate d and
    INTERVAL - d, so one is at most INTERVAL / 2, and the rate is up to twice the quota.)"""
    assert min(gaps(times)) >= 0.5 * INTERVAL
    assert (len(times) - 1) / (times[-1] - times[0]) <= 1.05 / INTERVAL


def report(label: str, times: list[float]) -> None:
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    MEASUREMENTS.append(
        f"pacing, {label}: {rate:.1f} requests/min sent at rpm {RPM}, closest two {min(gaps(times)):.2f} s "
        f"apart (slot {INTERVAL:.2f} s)"
    )


@pytest.mark.timeout(300)
def test_file_pacing_with_a_shared_state_dir_spaces_both_workers(stack, api, output, stack_emulator):
    shared = stack.folder / "pacing-shared"
    times, workers = send_times(stack_emulator, api, output, rpm_state_dir=str(shared))
    report("one shared rpm_state_dir", times)
    assert workers == {"stack-worker1", "stack-worker2"}
    assert_one_schedule(times)


@pytest.mark.timeout(400)
def test_per_host_file_pacing_over_sends_and_redis_pacing_holds(stack, api, output, stack_emulator):
    # Each worker keeps its own schedule in its own temp folder: together they send up to twice
    # the quota.
    per_host, workers = send_times(stack_emulator, api, output / "per-host")
    report("a file schedule per worker", per_host)
    assert workers == {"stack-worker1", "stack-worker2"}
    assert min(gaps(per_host)) < 0.5 * INTERVAL
    assert (len(per_host) - 1) / (per_host[-1] - per_host[0]) > 1.3 / INTERVAL

    # The same workers with the schedule in Redis (the stack's Redis, database 1): one schedule.
    in_redis, workers = send_times(
        stack_emulator, api, output / "redis", rpm_redis_conn_id=config.PACING_REDIS_CONN
    )
    report("the schedule in Redis", in_redis)
    assert workers == {"stack-worker1", "stack-worker2"}
    assert_one_schedule(in_redis)
