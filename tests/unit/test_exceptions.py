"""The MaiError family (exceptions.py): fields, pickling."""

from __future__ import annotations

import pickle

import pytest

from airflow_provider_mai.exceptions import (
    MaiContentFilterError,
)


# -- errors ----------------------------------------------------------------------------------------
def test_errors_survive_pickling_with_their_fields(hook, emulator):
    with pytest.raises(MaiContentFilterError) as info:
        hook.generate_image("emulator-blocked thing")
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is MaiContentFilterError
    assert (clone.status_code, clone.error_code, clone.label) == (
        400,
        "content_safety_violation",
        info.value.label,
    )
    assert str(clone) == str(info.value)
