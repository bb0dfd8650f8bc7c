"""Proactive pacing (connection extra ``rpm``): a shared send-slot schedule per deployment."""

from __future__ import annotations

import itertools

import pytest

from airflow_provider_mai.hooks.mai import MaiHook
from airflow_provider_mai.pacing import SAFETY_MARGIN, RequestPacer
from tests.helpers import reserve_pacing_slots, slots_taken_by_processes, waits_of_two_generations


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_slots_are_spaced_at_the_quota(tmp_path):
    clock = FakeClock()
    pacer = RequestPacer("endpoint|deployment", rpm=120, state_dir=tmp_path, clock=clock)
    waits = [pacer.reserve() for _ in range(4)]
    step = 0.5 * SAFETY_MARGIN
    assert waits == pytest.approx([0, step, 2 * step, 3 * step])


def test_an_idle_deployment_sends_at_once(tmp_path):
    clock = FakeClock()
    pacer = RequestPacer("k", rpm=6, state_dir=tmp_path, clock=clock)
    assert pacer.reserve() == 0
    clock.now += 600  # long after the last slot
    assert pacer.reserve() == 0


def test_pacers_share_the_schedule_per_deployment_only(tmp_path):
    clock = FakeClock()
    a1 = RequestPacer("e|a", rpm=60, state_dir=tmp_path, clock=clock)
    a2 = RequestPacer("e|a", rpm=60, state_dir=tmp_path, clock=clock)
    b = RequestPacer("e|b", rpm=60, state_dir=tmp_path, clock=clock)
    assert a1.reserve() == 0
    assert a2.reserve() == pytest.approx(1.0 * SAFETY_MARGIN)  # the second instance sees the first's slot
    assert b.reserve() == 0  # another deployment has its own quota


def test_a_damaged_schedule_file_is_recovered(tmp_path):
    pacer = RequestPacer("k", rpm=60, state_dir=tmp_path, clock=FakeClock())
    pacer.path.parent.mkdir(parents=True, exist_ok=True)
    pacer.path.write_text("garbage")
    assert pacer.reserve() == 0
    assert float(pacer.path.read_text()) > 0


def test_separate_processes_never_get_the_same_slot(tmp_path):
    slots = slots_taken_by_processes(reserve_pacing_slots, (str(tmp_path), 600, 25))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 100
    assert min(gaps) >= 0.1 * SAFETY_MARGIN - 1e-6  # 600 rpm: one slot every 0.1 s, no two alike


def test_hook_paces_its_requests_when_rpm_is_set(connect, emulator, tmp_path):
    hook = MaiHook(connect(extra={"rpm": 30, "rpm_state_dir": str(tmp_path)}))
    (wait,) = waits_of_two_generations(hook)  # the second slot is 2 s after the first
    assert len(emulator.requests) == 2
    assert 1.5 < wait <= 2.0 * SAFETY_MARGIN


def test_without_rpm_nothing_is_paced(connect, emulator):
    hook = MaiHook(connect())
    waits: list[float] = []
    hook.sleep = waits.append
    for prompt in "abc":
        hook.generate_image(prompt, width=768, height=768)
    assert waits == []


def test_rpm_must_be_a_number(connect, emulator):
    from airflow_provider_mai.exceptions import MaiConfigurationError

    with pytest.raises(MaiConfigurationError, match="rpm"):
        MaiHook(connect(extra={"rpm": "lots"})).generate_image("x")
    assert emulator.requests == []
