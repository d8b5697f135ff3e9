"""SSH links: one asyncssh connection per login node, re-established with backoff
when it drops; a system's local forwards ride on one of its login nodes.

A ``NodeLink`` is the connection to one login node (host key checked against
the configured known_hosts; never trust on first use), kept alive with
keepalives, shared by every system whose login node it is. It holds the
reverse forward through which compute nodes reach the hub's API, when the
systems have one. A ``SystemLink`` connects to every login node of its
system; the labs' local forwards all ride on one of them, the *carrier*. When
it is lost they move at once to another login node that is up, or wait for
the first one to come back, and listen again on the same local ports, so the
hub's routes stay valid.
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

from backend.sshconfig import LoginNode, SshTunnel

from . import fastpath, traffic

log = logging.getLogger("lablink.tunnel")

# AES-GCM first: with AES-NI it is several times faster than chacha20 in asyncssh
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
WINDOW = 8 << 20  # bytes in flight per channel
PACKET = 256 << 10
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
HUB_RETRY_MAX = 10.0
REBIND_AFTER = 2.0  # seconds before a forward whose port was taken tries again


class LinkDown(Exception):
    """No login node of the system could be reached; the message is for the log."""


@dataclass
class Forward:
    lab_id: str
    system: str
    host: str
    port: int
    local_port: int
    listener: Any = field(default=None, repr=False)
    node: NodeLink | None = field(default=None, repr=False)
    # the IP address ``host`` resolved to when the tunnel was opened: what the login
    # node is asked to connect to (a name is never resolved again)
    address: str = ""

    def __post_init__(self) -> None:
        self.address = self.address or self.host

    def record(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "system": self.system,
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "local_port": self.local_port,
        }


class NodeLink:
    """The connection to one login node, kept up for as long as the service runs."""

    def __init__(self, node: LoginNode, ssh: SshTunnel, hub: tuple[str, int]):
        self.node = node
        self.ssh = ssh  # the first system's; systems sharing a node agree (settings check)
        self.hub = hub
        self.systems: list[SystemLink] = []
        self.name = f"{node.host}:{node.port}"
        self.conn: asyncssh.SSHClientConnection | None = None
        self.state = "connecting"  # then "up" or "down" (retrying with backoff)
        self.problem = ""
        self.reconnects = 0  # connections lost
        self.restored = 0  # connections made again after one was lost
        self.hub_listener: Any = None
        self.hub_problem = ""  # why the hub's API cannot listen there, while it cannot
        self._task: asyncio.Task[None] | None = None
        self._pty: Any = None

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"ssh-{self.name}")

    async def _connect(self) -> asyncssh.SSHClientConnection:
        fastpath.install()  # forwarded data: fewer copies in asyncssh (see fastpath.py)
        ssh = self.ssh
        return await asyncio.wait_for(
            asyncssh.connect(
                self.node.host,
                self.node.port,
                username=ssh.user,
                client_keys=[ssh.key_file],
                known_hosts=ssh.known_hosts,
                keepalive_interval=ssh.keepalive,
                keepalive_count_max=3,
                agent_path=None,
                config=[],
                encryption_algs=CIPHERS,
                window=WINDOW,
                max_pktsize=PACKET,
            ),
            ssh.connect_timeout,
        )

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                problem = f"{self.name}: {type(exc).__name__}: {exc}".rstrip(": ")
                if problem != self.problem:
                    log.warning("cannot connect to %s; retrying", problem)
                self.problem, self.state = problem, "down"
                self._notify()
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            if self.reconnects > self.restored:
                self.restored += 1
            self.conn, self.state, self.problem = conn, "up", ""
            log.info("connected to %s", self.name)
            await self._open_pty(conn)
            hub = None
            if self.ssh.hub_forward is not None:
                hub = asyncio.create_task(self._hold_hub_forward(conn))
            self._notify()
            try:
                await conn.wait_closed()
            finally:
                if hub is not None:
                    hub.cancel()
            self.conn, self.hub_listener, self.state = None, None, "connecting"
            self.reconnects += 1
            log.warning("connection to %s lost; connecting again", self.name)
            for system in self.systems:
                system.node_lost(self)

    def _notify(self) -> None:
        for system in self.systems:
            system.notify()

    async def _open_pty(self, conn: asyncssh.SSHClientConnection) -> None:
        """Hold a session with a terminal on the connection: OpenSSH's sshd sets
        TCP_NODELAY on its socket only then, and without it every new forwarded
        connection waits ~40 ms for Nagle's algorithm. Best effort."""
        try:
            # `cat` with a terminal: no login shell (nothing of the user's start-up
            # files runs); it ends when the connection does
            self._pty = await conn.create_process("cat", term_type="dumb", stdin=asyncssh.PIPE)
        except (asyncssh.Error, OSError) as exc:
            log.info("no terminal session on %s (%s); new connections may be slower",
                     self.name, exc)  # fmt: skip

    async def _hold_hub_forward(self, conn: asyncssh.SSHClientConnection) -> None:
        """Listen on the login node for the hub's API (the hub forward's TLS listener
        is the other end). While the node refuses (the port taken there: by an
        earlier session of ours that sshd has not noticed is gone, or by somebody
        else), retry with backoff; the log says so once, health until it listens."""
        fwd = self.ssh.hub_forward
        assert fwd is not None
        host, port = self.hub
        delay = 0.5
        since = 0.0
        while not conn.is_closed():
            try:
                self.hub_listener = await conn.forward_remote_port(fwd.bind, fwd.port, host, port)
            except (asyncssh.ChannelListenError, asyncssh.Error, OSError) as exc:
                problem = (
                    f"{self.name} does not let us listen on {fwd.bind}:{fwd.port} for the "
                    f"hub's API ({exc})"
                )
                if problem != self.hub_problem:
                    log.error("labs behind %s cannot reach the hub: %s; retrying until it "
                              "can", self.name, problem)  # fmt: skip
                    since = since or time.monotonic()
                self.hub_problem = problem
                self._notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, HUB_RETRY_MAX)
                continue
            if self.hub_problem:
                log.warning("the hub's API is on %s:%s of %s again, after %.0f s", fwd.bind,
                            fwd.port, self.name, time.monotonic() - since)  # fmt: skip
            else:
                log.info("the hub's API is on %s:%s of %s", fwd.bind, fwd.port, self.name)
            self.hub_problem = ""
            self._notify()
            return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.conn.wait_closed()


class SystemLink:
    """A system's login nodes and the forwards of its labs."""

    def __init__(self, name: str, ssh: SshTunnel, bind: str, nodes: list[NodeLink]):
        self.name = name
        self.ssh = ssh
        self.bind = bind
        self.nodes = nodes
        for node in nodes:
            node.systems.append(self)
        self.forwards: dict[str, Forward] = {}
        self.traffic = traffic.Traffic()  # bytes through the forwards, each way
        self._carrier: NodeLink | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._news: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mender: asyncio.Task[None] | None = None

    # -- state ----------------------------------------------------------------

    @property
    def up(self) -> bool:
        return any(n.up for n in self.nodes)

    @property
    def hub_ready(self) -> bool:
        """The hub's API listens on every login node that is up (or is not needed)."""
        if self.ssh.hub_forward is None:
            return True
        up = [n for n in self.nodes if n.up]
        return bool(up) and all(n.hub_listener for n in up)

    @property
    def healthy(self) -> bool:
        """Every forward listening, and the hub's API reachable where configured."""
        return all(f.listener is not None for f in self.forwards.values()) and self.hub_ready

    @property
    def reconnects(self) -> int:
        return sum(n.reconnects for n in self.nodes)

    def problems(self) -> str:
        return "; ".join(n.problem for n in self.nodes if n.problem) or "not connected yet"

    def carrier(self) -> NodeLink | None:
        """The node the forwards ride on: the current one while it is up, else the
        first login node that is."""
        if self._carrier is None or not self._carrier.up:
            self._carrier = next((n for n in self.nodes if n.up), None)
        return self._carrier

    def summary(self) -> dict[str, Any]:
        carrier = self.carrier()
        return {
            "login_nodes": {n.name: n.state for n in self.nodes},
            "carrier": carrier.name if carrier else None,
            "hub_forward": [n.name for n in self.nodes if n.hub_listener],
            "hub_forward_problems": {n.name: n.hub_problem for n in self.nodes if n.hub_problem},
            "reconnects": self.reconnects,
        }

    # -- events ---------------------------------------------------------------

    def notify(self) -> None:
        """Something changed: mend the forwards, and wake whoever waits."""
        self._dirty.set()
        self._wake()

    def _wake(self) -> None:
        if not self._news.done():
            self._news.set_result(None)
        self._news = asyncio.get_running_loop().create_future()

    async def _next_news(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.shield(self._news), timeout)

    def node_lost(self, node: NodeLink) -> None:
        """The forwards that rode on ``node`` closed with its connection."""
        moved = 0
        for fwd in self.forwards.values():
            if fwd.node is node:
                fwd.listener, fwd.node = None, None
                moved += 1
        if moved:
            log.warning("%s: restoring %d forwards", self.name, moved)
        self.notify()

    # -- running --------------------------------------------------------------

    def start(self) -> None:
        """Connect to every login node (in the background); idempotent."""
        if self._mender is None:
            for node in self.nodes:
                node.start()
            self._mender = asyncio.create_task(self._mend(), name=f"mend-{self.name}")

    async def _mend(self) -> None:
        """Listen again for every forward that is not listening, on the carrier."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            node = self.carrier()
            if node is None:
                continue
            async with self._lock:
                for fwd in list(self.forwards.values()):
                    if fwd.listener is not None or not node.up:
                        continue
                    try:
                        await self._listen(node, fwd)
                    except OSError as exc:
                        log.error("%s: lab %s cannot listen on port %s again (%s); retrying",
                                  self.name, fwd.lab_id, fwd.local_port, exc)  # fmt: skip
                        asyncio.get_running_loop().call_later(REBIND_AFTER, self.notify)
            self._wake()

    async def _listen(self, node: NodeLink, fwd: Forward) -> None:
        assert node.conn is not None
        fwd.listener = await traffic.forward_local_port(
            node.conn, self.bind, fwd.local_port, fwd.address, fwd.port, self.traffic
        )
        fwd.node = node

    async def settle(self, deadline: float) -> bool:
        """Wait until the link is healthy or ``deadline`` (monotonic) passes."""
        self.start()
        while not self.healthy:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await self._next_news(remaining)
        return True

    async def add(self, fwd: Forward, deadline: float) -> None:
        """Open a forward on the carrier; raise LinkDown when no login node is up
        once each has been tried (or at ``deadline``), OSError when the local port
        is taken."""
        self.start()
        while True:
            node = self.carrier()
            if node is not None:
                async with self._lock:
                    if node.up:
                        await self._listen(node, fwd)
                        self.forwards[fwd.lab_id] = fwd
                        return
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or all(n.state == "down" for n in self.nodes):
                raise LinkDown(self.problems())
            with contextlib.suppress(TimeoutError):
                await self._next_news(remaining)

    async def remove(self, lab_id: str) -> Forward | None:
        fwd = self.forwards.pop(lab_id, None)
        if fwd is not None and fwd.listener is not None:
            fwd.listener.close()
            with contextlib.suppress(Exception):
                await fwd.listener.wait_closed()
            fwd.listener = None
        return fwd

    async def close(self) -> None:
        if self._mender is not None:
            self._mender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mender
        for fwd in self.forwards.values():
            if fwd.listener is not None:
                fwd.listener.close()


def port_in_use(exc: OSError) -> bool:
    return exc.errno == errno.EADDRINUSE
