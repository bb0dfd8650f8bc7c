"""Connections to the emulator, as the JSON an ``AIRFLOW_CONN_<ID>`` variable holds."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_mai.emulator import MaiEmulator

API_KEY = "test-key-" + "k" * 48


def emulator_connection(emulator: MaiEmulator, **overrides: Any) -> str:
    """A ``mai`` connection to the emulator, as the JSON an ``AIRFLOW_CONN_<ID>`` variable holds.

    Keyword arguments override connection fields; ``extra`` is merged into the default extras.
    Retry delays are tiny so that backoff paths run fast.
    """
    conn: dict[str, Any] = {
        "conn_type": "mai",
        "host": emulator.url,
        "password": API_KEY,
        "extra": {
            "deployment": "mai-image-2-5",
            "max_retries": 3,
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.05,
        },
    }
    extra = overrides.pop("extra", {})
    conn.update(overrides)
    conn["extra"] = {k: v for k, v in {**conn["extra"], **extra}.items() if v is not None}
    return json.dumps({k: v for k, v in conn.items() if v is not None})
