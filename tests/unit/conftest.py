"""Fixtures shared by the unit tests: hooks on the emulator, recorders, Entra ID connections."""

from __future__ import annotations

import pytest

from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.helpers import SleepRecorder


@pytest.fixture
def recorder() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def hook(connect, recorder) -> MaiHook:
    """A hook on the emulator whose waits (backoff, pacing) are recorded, not slept."""
    return MaiHook(connect(), sleep=recorder)


@pytest.fixture
def entra_conn(connect) -> str:
    return connect("mai_entra", password=None)
