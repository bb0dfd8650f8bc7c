"""Proactive request pacing: keep a deployment under its requests-per-minute quota without 429s.

Waiting for 429s and backing off wastes requests and makes workers oscillate: they all learn of the
limit at once, back off together and return together. When the connection states the quota (extra
``rpm``), every request instead takes the next free *send slot* of that deployment, slots being
``60 / rpm`` seconds apart, and sleeps until its slot comes. Requests are then spread evenly at
exactly the quota, however many tasks run at once.

The slot schedule is one small file per endpoint and deployment, updated under an exclusive
``flock``, so every task on a host shares it - all processes of a LocalExecutor or of one Celery
worker. Hosts do not share it: give each host its share of the quota (``rpm`` = quota / hosts), or
point ``rpm_state_dir`` at a shared volume that supports locks.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: Slots are spaced a little wider than 60/rpm so that clock jitter and the service's own window
#: edges never tip a request over the quota (at 1 % the cost is under one request per 100).
SAFETY_MARGIN = 1.01


def default_state_dir() -> Path:
    """Where slot schedules live unless the connection says otherwise (per user, on this host)."""
    return Path(tempfile.gettempdir()) / f"airflow-provider-mai-{os.getuid()}"


class RequestPacer:
    """The send-slot schedule of one deployment, shared through a locked file.

    :param key: what identifies the quota: the endpoint and the deployment.
    :param rpm: the quota in requests per minute.
    :param state_dir: folder of the schedule files (default :func:`default_state_dir`).
    :param clock: wall-clock seconds; the schedule is compared across processes, so not monotonic.
    """

    def __init__(
        self,
        key: str,
        rpm: float,
        state_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rpm <= 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        self.interval = 60.0 / rpm * SAFETY_MARGIN
        folder = Path(state_dir) if state_dir else default_state_dir()
        self.path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.slots"
        self._clock = clock

    def reserve(self) -> float:
        """Take the next free send slot; return the seconds to wait until it (0 when it is now)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0)
            try:
                next_free = float(raw.decode() or 0)
            except ValueError:  # a damaged schedule only costs one slot of spacing
                next_free = 0.0
            now = self._clock()
            slot = max(now, next_free)
            encoded = repr(slot + self.interval).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, encoded, 0)
        finally:
            os.close(fd)  # releases the lock
        return slot - now
