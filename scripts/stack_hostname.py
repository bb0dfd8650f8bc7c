"""The host name Airflow records for this process (``AIRFLOW__CORE__HOSTNAME_CALLABLE``).

``scripts/stack.sh`` runs two Celery workers on one machine: both would report the same host name,
and task instances could not tell which worker ran them. Each worker process gets its own
``MAI_STACK_HOSTNAME``; every other process reports the machine's name as Airflow does by default.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``$MAI_STACK_HOSTNAME`` when set (a stack worker), else the machine's fully qualified name."""
    return os.environ.get("MAI_STACK_HOSTNAME") or socket.getfqdn()
