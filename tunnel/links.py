"""SSH links: one asyncssh connection per system's login node, carrying all of that
system's local forwards, re-established with backoff when it drops.

A ``SystemLink`` connects to the first of the system's login nodes that
answers (host keys checked against the configured known_hosts; never trust on
first use), keeps it alive with keepalives, and holds the forwards. When the
connection is lost (sshd restarted, the connection killed, the network gone)
its supervisor connects again with backoff and opens every forward again on
the same local port, so the hub's routes stay valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from backend.sshconfig import SshTunnel

log = logging.getLogger("lablink.tunnel")

# AES-GCM first: with AES-NI it is several times faster than chacha20 in asyncssh
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
WINDOW = 8 << 20  # bytes in flight per channel
PACKET = 256 << 10
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class LinkDown(Exception):
    """No login node of the system could be reached; the message is for a person."""


@dataclass
class Forward:
    lab_id: str
    system: str
    host: str
    port: int
    local_port: int
    listener: Any = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "system": self.system,
            "host": self.host,
            "port": self.port,
            "local_port": self.local_port,
        }


class SystemLink:
    def __init__(self, name: str, ssh: SshTunnel, bind: str):
        self.name = name
        self.ssh = ssh
        self.bind = bind
        self.forwards: dict[str, Forward] = {}
        self.conn: asyncssh.SSHClientConnection | None = None
        self.node = ""
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0
        self._pty: Any = None

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    @property
    def healthy(self) -> bool:
        """Connected, and every forward listening."""
        return self.up and all(f.listener is not None for f in self.forwards.values())

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        problems = []
        for node in self.ssh.login_nodes:
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        node.host,
                        node.port,
                        username=self.ssh.user,
                        client_keys=[self.ssh.key_file],
                        known_hosts=self.ssh.known_hosts,
                        keepalive_interval=self.ssh.keepalive,
                        keepalive_count_max=3,
                        agent_path=None,
                        config=[],
                        encryption_algs=CIPHERS,
                        window=WINDOW,
                        max_pktsize=PACKET,
                    ),
                    self.ssh.connect_timeout,
                )
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                problems.append(f"{node.host}:{node.port}: {type(exc).__name__}: {exc}")
                continue
            self.node = f"{node.host}:{node.port}"
            return conn
        raise LinkDown("; ".join(problems))

    async def connect(self, deadline: float | None = None) -> None:
        """Connect (if not connected) and open every forward; retry with backoff
        until ``deadline`` (monotonic), or once when it is None."""
        delay = BACKOFF_FIRST
        while True:
            try:
                async with self._lock:
                    if not self.up:
                        self.conn = await self._connect_once()
                        log.info("%s: connected to %s", self.name, self.node)
                        await self._open_pty(self.conn)
                        self._watch(self.conn)
                    for fwd in self.forwards.values():
                        if fwd.listener is None:
                            await self._listen(fwd)
                return
            except LinkDown as exc:
                if deadline is None or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: no login node answers (%s); retrying", self.name, exc)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311
            delay = min(delay * 2, BACKOFF_MAX)

    async def _open_pty(self, conn: asyncssh.SSHClientConnection) -> None:
        """Hold a session with a terminal on the connection: OpenSSH's sshd sets
        TCP_NODELAY on its socket only then, and without it every new forwarded
        connection waits ~40 ms for Nagle's algorithm. Best effort."""
        try:
            # `cat` with a terminal: no login shell (nothing of the user's start-up
            # files runs); it ends when the connection does
            self._pty = await conn.create_process("cat", term_type="dumb", stdin=asyncssh.PIPE)
        except (asyncssh.Error, OSError) as exc:
            log.info("%s: no terminal session (%s); new connections may be slower", self.name,
                     exc)  # fmt: skip

    def _watch(self, conn: asyncssh.SSHClientConnection) -> None:
        old = self._supervisor
        if old is not None and old is not asyncio.current_task() and not old.done():
            old.cancel()
        self._supervisor = asyncio.create_task(self._supervise(conn), name=f"link-{self.name}")

    async def _supervise(self, conn: asyncssh.SSHClientConnection) -> None:
        """When the connection drops, connect again and restore every forward."""
        await conn.wait_closed()
        if self._closing:
            return
        log.warning("%s: connection to %s lost; restoring %d forwards", self.name, self.node,
                    len(self.forwards))  # fmt: skip
        for fwd in self.forwards.values():
            fwd.listener = None  # they closed with the connection
        self.conn = None
        self.reconnects += 1
        while not self._closing:
            try:
                await self.connect(deadline=time.monotonic() + 3600)
                return
            except LinkDown:
                continue

    async def _listen(self, fwd: Forward) -> None:
        assert self.conn is not None
        fwd.listener = await self.conn.forward_local_port(
            self.bind, fwd.local_port, fwd.host, fwd.port
        )

    async def add(self, fwd: Forward, deadline: float) -> None:
        """Open a forward (connecting first if needed); raise LinkDown or OSError."""
        self.forwards[fwd.lab_id] = fwd
        try:
            await self.connect(deadline)
        except (LinkDown, OSError):
            self.forwards.pop(fwd.lab_id, None)
            raise

    async def remove(self, lab_id: str) -> Forward | None:
        fwd = self.forwards.pop(lab_id, None)
        if fwd is not None and fwd.listener is not None:
            fwd.listener.close()
            with contextlib.suppress(Exception):
                await fwd.listener.wait_closed()
            fwd.listener = None
        return fwd

    async def close(self) -> None:
        self._closing = True
        for lab_id in list(self.forwards):
            fwd = self.forwards[lab_id]
            if fwd.listener is not None:
                fwd.listener.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.conn.wait_closed()


def port_in_use(exc: OSError) -> bool:
    return exc.errno == errno.EADDRINUSE
