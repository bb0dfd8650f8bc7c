"""Processes on this machine, read from /proc: the ones we start (by PID and start time), their trees
and sessions, memory (PSS), listening addresses; loopback ports; bounded waits; logged commands."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import LOOPBACK, StackError


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the PID, it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def boot_time() -> float:
    """When the machine booted, in seconds since the epoch (``btime`` of /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise StackError("/proc/stat has no btime line")


@dataclass(frozen=True)
class Process:
    """A process we started, named by its PID and start time (so a reused PID is never signalled)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Process:
        """The process running as ``pid`` now."""
        started = start_time(pid)
        if started is None:
            raise StackError(f"process {pid} exited at once")
        return cls(pid, started)

    def alive(self) -> bool:
        """Whether this very process still runs (not ended, not a zombie, PID not reused)."""
        fields = _stat(self.pid)
        return fields is not None and int(fields[19]) == self.started and fields[0] != "Z"

    def started_at(self) -> float:
        """When this process started, in seconds since the epoch (to a clock tick)."""
        return boot_time() + self.started / os.sysconf("SC_CLK_TCK")

    def signal(self, sig: int) -> None:
        """Send ``sig`` if this very process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(self.pid, sig)


def _all_stats() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            yield int(entry.name), fields


def children_by_parent() -> dict[int, list[int]]:
    """Every process on the machine, grouped under its parent's PID."""
    tree: dict[int, list[int]] = {}
    for pid, fields in _all_stats():
        tree.setdefault(int(fields[1]), []).append(pid)
    return tree


def session_members(leader: Process) -> list[Process]:
    """Processes of the session ``leader`` started (we start each component in its own session):
    they stay in it when their parent dies and they move under init, out of the tree."""
    return [
        Process(pid, int(fields[19]))
        for pid, fields in _all_stats()
        if int(fields[3]) == leader.pid and int(fields[19]) >= leader.started and pid != leader.pid
    ]


def process_tree(pid: int) -> list[Process]:
    """``pid`` and all its descendants (task processes start their own sessions but stay below)."""
    tree = children_by_parent()
    found: list[Process] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        started = start_time(current)
        if started is not None:
            found.append(Process(current, started))
            pending.extend(tree.get(current, []))
    return found


def pss_kib(pids: Iterable[int]) -> int:
    """Proportional set size of these processes together, in KiB (shared pages counted once)."""
    return rollup_kib(pids, "Pss")


def rollup_kib(pids: Iterable[int], field: str) -> int:
    """A field of ``/proc/PID/smaps_rollup`` (``Pss``, ``Rss``...) added up over these processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return total


def _decode_address(hex_address: str) -> str:
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, words)}:{int(port, 16)}"


def listening_addresses(pids: Iterable[int]) -> list[str]:
    """The TCP addresses these processes listen on (from /proc/net/tcp and tcp6)."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = _decode_address(fields[1])
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:["):
                address = inodes.get(link[8:-1])
                if address:
                    found.add(address)
    return sorted(found)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (and we may bind it)."""
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def all_ended(processes: list[Process], within: float) -> bool:
    """Wait (bounded) until none of ``processes`` is alive; whether they all ended."""
    return wait_until(lambda: "running" if any(p.alive() for p in processes) else None, within, 0.2) is None


def wait_until(check: Callable[[], str | None], within: float, interval: float = 0.5) -> str | None:
    """Poll ``check`` (None = ready, else why not) until ready or ``within`` seconds; the last reason."""
    deadline = time.monotonic() + within
    while True:
        reason = check()
        if reason is None or time.monotonic() > deadline:
            return reason
        time.sleep(interval)


def run_logged(
    command: list[str], what: str, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Run ``command`` to its end, output appended to ``log``; a StackError quoting the log's tail
    when it fails."""
    with open(log, "ab") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=300, check=False
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StackError(
            f"{what} failed (exit {result.returncode}); read {log}\n" + "\n".join(f"    {t}" for t in tail)
        )
