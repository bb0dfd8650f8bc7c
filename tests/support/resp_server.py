"""A hand-written Redis 5 on loopback, for the conversations Debian's redis-server (7.x) cannot have.

It speaks RESP2 only and answers as Redis 5.0 does where it matters here:

- a command it does not know (``HELLO``, which Redis 6 added) is refused *before* authentication,
  with an error that quotes its first arguments - ``AUTH default <password>`` included;
- ``AUTH`` takes the password alone (no user names before Redis 6);
- ``CLIENT SETINFO`` (Redis 7.2) is an unknown subcommand;
- ``SCRIPT LOAD`` / ``EVALSHA`` / ``EVAL`` run the provider's reservation script - written here in
  Python on this server's clock (the only script it knows), ``TIME``, ``PING``, ``SELECT``.

A test can make it misbehave: answer the script with bytes of its choosing (a wrong type, a
nested list, a huge reply) or drip every answer a byte at a time. Every command is recorded;
every thread stops (bounded joins) with ``stop()``.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

from airflow_provider_mai.client.pacing.redis_rules import RESERVE_SCRIPT
from tests.support.servers import LoopbackServer

RESERVE_SHA = hashlib.sha1(RESERVE_SCRIPT.encode()).hexdigest()


def bulk(value: bytes | str) -> bytes:
    """A RESP bulk string."""
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array(*items: bytes) -> bytes:
    """A RESP array of already encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def unknown_command(args: list[bytes]) -> bytes:
    """Redis 5's refusal of a command it does not know: the name, then its arguments quoted one by
    one, until the list of them passes 128 characters."""
    quoted = ""
    for arg in args[1:]:
        if len(quoted) >= 128:
            break
        quoted += "`" + arg.decode(errors="replace")[: 128 - len(quoted)] + "`, "
    name = args[0].decode(errors="replace")
    return f"-ERR unknown command `{name}`, with args beginning with: {quoted}\r\n".encode()


class Redis5Server(LoopbackServer):
    """A loopback RESP2 server acting as Redis 5.0 (see the module docstring).

    :param password: ``requirepass``; None for no password.
    :param script_reply: raw bytes answering every script run, instead of a reservation.
    :param drip: seconds between the bytes of every answer (None: answers are sent whole).
    """

    def __init__(
        self,
        password: str | None = None,
        *,
        script_reply: bytes | None = None,
        drip: float | None = None,
    ) -> None:
        self.password = password
        self.script_reply = script_reply
        self.drip = drip
        #: Every command received, as its arguments.
        self.commands: list[list[bytes]] = []
        self.slots: dict[bytes, float] = {}
        self._scripts: set[str] = set()
        self._lock = threading.Lock()
        super().__init__()

    def url(self, password: str | None = None) -> str:
        """A ``redis://`` URL of this server (with ``password``, default the server's own)."""
        password = self.password if password is None else password
        return f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"

    def names(self) -> list[str]:
        """The names of the commands received, in order."""
        return [args[0].decode().upper() for args in self.commands]

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        state = {"authed": self.password is None}
        pending = b""
        while not self.stopping.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            while (parsed := _command(pending)) is not None:
                args, pending = parsed
                with self._lock:
                    self.commands.append(args)
                    answer = self._answer(args, state)
                if not self._send(conn, answer):
                    return

    def _send(self, conn: socket.socket, data: bytes) -> bool:
        try:
            if self.drip is None:
                conn.sendall(data)
                return True
            for index in range(len(data)):
                if self.stopping.wait(self.drip):
                    return False
                conn.sendall(data[index : index + 1])
            return True
        except OSError:
            return False  # the client gave up: often the point of the test

    def _answer(self, args: list[bytes], state: dict[str, bool]) -> bytes:
        name = args[0].upper()
        known = {b"AUTH", b"CLIENT", b"SELECT", b"PING", b"TIME", b"SCRIPT", b"EVALSHA", b"EVAL"}
        if name not in known:
            return unknown_command(args)  # Redis 5 looks the command up before it checks AUTH
        if name == b"AUTH":
            if len(args) != 2:
                return b"-ERR wrong number of arguments for 'auth' command\r\n"
            if self.password is None:
                return b"-ERR Client sent AUTH, but no password is set\r\n"
            state["authed"] = args[1].decode(errors="replace") == self.password
            return b"+OK\r\n" if state["authed"] else b"-ERR invalid password\r\n"
        if not state["authed"]:
            return b"-NOAUTH Authentication required.\r\n"
        if name == b"CLIENT":
            sub = args[1].decode(errors="replace") if len(args) > 1 else ""
            refusal = f"-ERR Unknown subcommand or wrong number of arguments for '{sub}'. Try CLIENT HELP"
            return refusal.encode() + b"\r\n"
        if name == b"SELECT":
            if len(args) == 2 and args[1].isdigit() and int(args[1]) < 16:
                return b"+OK\r\n"
            return b"-ERR DB index is out of range\r\n"
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"TIME":
            now = time.time()
            return array(bulk(str(int(now))), bulk(str(int(now % 1 * 1_000_000))))
        if name == b"SCRIPT" and len(args) == 3 and args[1].upper() == b"LOAD":
            sha = hashlib.sha1(args[2]).hexdigest()
            self._scripts.add(sha)
            return bulk(sha)
        if name == b"EVALSHA" and len(args) >= 3:
            if args[1].decode(errors="replace").lower() not in self._scripts:
                return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
            return self._run(args[1].decode().lower(), args[2:])
        if name == b"EVAL" and len(args) >= 3:
            sha = hashlib.sha1(args[1]).hexdigest()
            self._scripts.add(sha)
            return self._run(sha, args[2:])
        return b"-ERR syntax error\r\n"

    def _run(self, sha: str, rest: list[bytes]) -> bytes:
        """The reservation script, on this server's clock (see ``RESERVE_SCRIPT``)."""
        if sha != RESERVE_SHA:
            return b"-ERR Error running script: this test server knows only the reservation script\r\n"
        if self.script_reply is not None:
            return self.script_reply
        numkeys = int(rest[0])
        key, interval, max_wait = rest[1], float(rest[1 + numkeys]), float(rest[2 + numkeys])
        now = time.time()
        slot = max(now, self.slots.get(key, 0.0))
        if slot - now > max_wait:
            return array(bulk(f"{max_wait:.6f}"), bulk("0"), bulk(f"{now + max_wait:.6f}"))
        self.slots[key] = slot + interval
        return array(bulk(f"{slot - now:.6f}"), bulk("1"), bulk(f"{slot:.6f}"))


def _command(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The first whole command in ``data`` (a RESP array of bulk strings) and what follows it;
    None until it has all arrived."""
    if not data.startswith(b"*"):
        if b"\r\n" not in data:
            return None
        line, _, rest = data.partition(b"\r\n")  # an inline command
        return line.split(), rest
    head, sep, rest = data.partition(b"\r\n")
    if not sep:
        return None
    args = []
    for _ in range(int(head[1:])):
        length_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return None
        length = int(length_line[1:])
        if len(rest) < length + 2:
            return None
        args.append(rest[:length])
        rest = rest[length + 2 :]
    return args, rest
