"""The few Airflow names that moved between 3.0 and 3.3: one place to import them from."""

from __future__ import annotations

try:  # Airflow >= 3.1
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]

__all__ = ["AirflowException", "AirflowFailException", "mask_secret", "redact"]


def mask_secret(secret: str) -> None:
    """Register ``secret`` with Airflow's secret masker (redacted from logs from then on)."""
    try:  # Airflow >= 3.1
        from airflow.sdk.log import mask_secret as register
    except ImportError:  # Airflow 3.0
        from airflow.sdk.execution_time.secrets_masker import mask_secret as register  # type: ignore[no-redef]
    register(secret)


def redact(value: object) -> object:
    """What Airflow's secret masker makes of ``value`` (used by tests to prove registration)."""
    try:  # Airflow >= 3.2
        from airflow.sdk._shared.secrets_masker import redact as masker_redact
    except ImportError:  # Airflow 3.0 / 3.1
        from airflow.sdk.execution_time.secrets_masker import redact as masker_redact  # type: ignore[no-redef]
    return masker_redact(value)
