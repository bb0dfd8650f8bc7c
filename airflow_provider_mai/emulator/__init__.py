"""A local MAI image service for tests, CI and demos: no Azure account, no quota.

>>> from airflow_provider_mai.emulator import MaiEmulator, Fault
>>> with MaiEmulator(rpm=10) as emulator:          # doctest: +SKIP
...     emulator.inject(Fault(status=429, retry_after=1))
...     print(emulator.url)

Needs Pillow (``pip install "airflow-provider-mai[emulator]"``).
"""

from __future__ import annotations

from airflow_provider_mai.emulator.protocol import DEFAULT_DEPLOYMENTS, MODELS, MaiProtocol
from airflow_provider_mai.emulator.server import CHAOS_FAULTS, Fault, MaiEmulator, RecordedRequest

__all__ = [
    "CHAOS_FAULTS",
    "DEFAULT_DEPLOYMENTS",
    "MODELS",
    "Fault",
    "MaiEmulator",
    "MaiProtocol",
    "RecordedRequest",
]
