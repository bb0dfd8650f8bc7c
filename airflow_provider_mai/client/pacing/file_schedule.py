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

The schedule is not trusted blindly. Its folder must belong to the user and be writable by no one
else; the file is opened without following links; and a slot further away than the schedule can
legitimately reach (:func:`max_wait_seconds` plus one slot) or not a finite number - a damaged
file, a wall clock stepped back - is discarded: it costs at most one slot of spacing. No request
waits longer than :func:`max_wait_seconds`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: Slots are spaced a little wider than 60/rpm so that clock jitter and the service's own window
#: edges never tip a request over the quota (at 1 % the cost is under one request per 100).
SAFETY_MARGIN = 1.01
#: A schedule may run at most a minute of quota ahead, and never fewer slots than this.
MIN_QUEUED_SLOTS = 4


def max_wait_seconds(rpm: float) -> float:
    """The longest a request waits for its slot: one minute of quota, or ``MIN_QUEUED_SLOTS`` slots
    when the quota is under that many requests a minute. A longer queue means more tasks wait for
    the deployment than its quota serves (the pool is too large), and waiting longer only holds
    worker slots. It also bounds what a damaged schedule or a wall clock stepped back can cost."""
    return 60.0 / rpm * SAFETY_MARGIN * max(rpm, MIN_QUEUED_SLOTS)


class PacingStateError(Exception):
    """The schedule's folder or file is not safe to use (owned by another user, a link...)."""


def default_state_dir() -> Path:
    """Where slot schedules live unless the connection says otherwise (per user, on this host)."""
    return Path(tempfile.gettempdir()) / f"airflow-provider-mai-{os.getuid()}"


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (mode 0700) or check that it is ours, a real folder, and closed to others."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise PacingStateError(f"pacing state folder {folder} is not a folder (a link or a file)")
    if info.st_uid != os.geteuid():
        raise PacingStateError(f"pacing state folder {folder} belongs to another user (uid {info.st_uid})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PacingStateError(f"pacing state folder {folder} is writable by other users")


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
        if not (rpm > 0 and math.isfinite(rpm)):
            raise ValueError(f"rpm must be a positive number, got {rpm}")
        self.interval = 60.0 / rpm * SAFETY_MARGIN
        #: The furthest a slot can legitimately be (:func:`max_wait_seconds`).
        self.horizon = max_wait_seconds(rpm)
        folder = Path(state_dir) if state_dir else default_state_dir()
        self.path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.slots"
        self._clock = clock

    def reserve(self) -> float:
        """Take the next free send slot; return the seconds to wait until it (0 when it is now).

        Never more than :attr:`horizon`: when the schedule runs further ahead, the request takes no
        slot and is sent after the horizon. Raises :class:`PacingStateError` when the state is unsafe.
        """
        _private_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # ELOOP: the file is a link
            raise PacingStateError(f"cannot open pacing state {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise PacingStateError(f"pacing state {self.path} is not a regular file of this user")
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self._clock()
            slot = max(now, self._read_slot(fd, now))
            if slot - now > self.horizon:
                # More tasks wait than the quota serves within the bound: send after the bound, and
                # leave the schedule as it is (the slots already handed out still come first).
                return self.horizon
            os.ftruncate(fd, 0)
            os.pwrite(fd, repr(slot + self.interval).encode(), 0)
        finally:
            os.close(fd)  # releases the lock
        return slot - now

    def _read_slot(self, fd: int, now: float) -> float:
        """The next free slot the file records, or ``now`` when it holds nothing believable."""
        raw = os.pread(fd, 64, 0)
        try:
            next_free = float(raw.decode("ascii") or 0)
        except (UnicodeDecodeError, ValueError):
            return now
        if not math.isfinite(next_free) or next_free > now + self.horizon + self.interval:
            return now  # further than any slot ever handed out: damaged, or the clock stepped back
        return next_free
