"""Proactive pacing (connection extra ``rpm``): a shared send-slot schedule per deployment."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from airflow_provider_mai.client.pacing.file_schedule import SAFETY_MARGIN, PacingStateError, RequestPacer
from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.helpers import reserve_pacing_slots, slots_taken_by_processes, waits_of_two_generations


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
    (wait,) = waits_of_two_generations(connect(extra={"rpm": 6, "rpm_state_dir": str(tmp_path)}))
    # the second slot is 10.1 s after the first (less the first request's time; waits are recorded)
    assert len(emulator.requests) == 2
    assert 5 < wait <= 10 * SAFETY_MARGIN


def test_without_rpm_nothing_is_paced(connect, emulator):
    waits: list[float] = []
    hook = MaiHook(connect(), sleep=waits.append)
    for prompt in "abc":
        hook.generate_image(prompt, width=768, height=768)
    assert waits == []


def test_rpm_must_be_a_number(connect, emulator):
    from airflow_provider_mai.exceptions import MaiConfigurationError

    with pytest.raises(MaiConfigurationError, match="rpm"):
        MaiHook(connect(extra={"rpm": "lots"})).generate_image("x")
    assert emulator.requests == []


# -- a shared host: the schedule is not trusted blindly ---------------------------------------------
def _another_users_folder(tmp_path):
    """A folder this user does not own: made and given away when root, else the root folder."""
    if os.geteuid() != 0:
        return Path("/")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)  # nobody
    return folder


def test_a_folder_owned_by_another_user_is_refused(tmp_path):
    pacer = RequestPacer("k", rpm=60, state_dir=_another_users_folder(tmp_path), clock=FakeClock())
    with pytest.raises(PacingStateError, match="belongs to another user"):
        pacer.reserve()


def test_a_folder_others_can_write_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(PacingStateError, match="writable by other users"):
        RequestPacer("k", rpm=60, state_dir=folder, clock=FakeClock()).reserve()


def test_a_linked_folder_or_schedule_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    pacer = RequestPacer("k", rpm=60, state_dir=folder, clock=FakeClock())
    pacer.path.symlink_to(victim)  # planted by someone who guessed the name
    with pytest.raises(PacingStateError, match="cannot open"):
        pacer.reserve()
    assert victim.read_text() == "precious"
    linked = tmp_path / "linked-state"
    linked.symlink_to(folder)
    with pytest.raises(PacingStateError, match="not a folder"):
        RequestPacer("k2", rpm=60, state_dir=linked, clock=FakeClock()).reserve()


@pytest.mark.parametrize("content", ["9000000000", "inf", "-inf", "nan", "1e309", "\xff\xfe", "12" * 40])
def test_an_unbelievable_schedule_costs_at_most_one_slot(tmp_path, content):
    clock = FakeClock()
    pacer = RequestPacer("k", rpm=12, state_dir=tmp_path / "s", clock=clock)
    pacer.reserve()
    pacer.path.write_bytes(content.encode("latin-1"))
    wait = pacer.reserve()  # no OverflowError, no 7e9 s wait
    assert 0 <= wait <= pacer.horizon
    assert wait == 0  # nothing believable: this request takes the slot that is now
    assert pacer.reserve() == pytest.approx(pacer.interval)  # and the schedule goes on from there


def test_a_wall_clock_stepped_back_an_hour_does_not_park_the_next_request(tmp_path):
    clock = FakeClock()
    pacer = RequestPacer("k", rpm=12, state_dir=tmp_path / "s", clock=clock)
    pacer.reserve()
    clock.now -= 3600
    assert pacer.reserve() == 0


def test_waits_never_exceed_the_horizon_even_with_a_long_queue(tmp_path):
    clock = FakeClock()
    pacer = RequestPacer("k", rpm=120, state_dir=tmp_path / "s", clock=clock)
    waits = [pacer.reserve() for _ in range(300)]  # far more than a minute of the quota at once
    assert max(waits) <= pacer.horizon


def test_an_unsafe_state_folder_is_a_configuration_error_before_sending(connect, emulator, tmp_path):
    from airflow_provider_mai.exceptions import MaiConfigurationError

    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    hook = MaiHook(connect("mai_paced", extra={"rpm": 30, "rpm_state_dir": str(folder)}))
    with pytest.raises(MaiConfigurationError, match=r"'mai_paced'.*writable by other users"):
        hook.generate_image("x", width=768, height=768)
    assert emulator.requests == []


def test_a_saturated_schedule_never_sends_faster_than_the_quota(tmp_path):
    clock = FakeClock()
    pacer = RequestPacer("k", rpm=60, state_dir=tmp_path / "s", clock=clock)
    waits = [pacer.reserve() for _ in range(70)]  # 70 tasks at once against 60 per minute
    assert max(waits) <= pacer.horizon
    assert sum(1 for w in waits if w < 10) <= 10  # the first 10 s carry 10 slots, no burst on top
    assert waits[-10:] == [pacer.horizon] * 10  # the overflow waits the bound and takes no slot
